"""Log forging (issue 16): a value from an email can never split one log record into several lines.

Every control character (C0, DEL, C1) and the Unicode line and paragraph separators in a record's message and
arguments are written as ``\\xNN`` / ``\\uNNNN``, in the text and the JSON format; a traceback stays readable on
continuation lines that can never pass for a record of their own.
"""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest

import log_setup
from log_setup import ServiceFormatter, escape_controls, register_secrets

TEXT_LINE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[\d+\] "
                       r"[\w.]+: ")

# Each character that str.splitlines(), a terminal or a log viewer would treat as a line break or a control,
# with the escape the record must carry instead.
FORGING_CHARACTERS = [
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
    ("\x85", "\\x85"),
    ("\x0b", "\\x0b"),
    ("\x0c", "\\x0c"),
    ("\x1b", "\\x1b"),
    ("\r", "\\x0d"),
    ("\n", "\\x0a"),
    ("\x00", "\\x00"),
    ("\x1c", "\\x1c"),
    ("\x7f", "\\x7f"),
    ("\x9b", "\\x9b"),
]
IDS = [f"U+{ord(char):04X}" for char, _ in FORGING_CHARACTERS]


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    monkeypatch.setattr(log_setup, "_secrets", ())
    monkeypatch.setattr(log_setup, "_own_addresses", frozenset())


def record(message: str, *args, level: int = logging.WARNING, exc_info=None) -> logging.LogRecord:
    name = "services.r2_offload"
    return logging.getLogger(name).makeRecord(name, level, __file__, 1, message, args, exc_info)


def raised(message: str):
    try:
        raise ValueError(message)
    except ValueError:
        return sys.exc_info()


@pytest.mark.parametrize("char, escaped", FORGING_CHARACTERS, ids=IDS)
def test_a_forged_host_stays_on_the_one_text_line_of_its_record_escaped(char, escaped):
    # Given a link host from an email that carries a line break or control and a fake record after it
    host = f"evil{char}2026-01-01T00:00:00.000Z INFO [1] app: fake line"
    # When it is logged
    line = ServiceFormatter("text").format(record("SECURITY: refused host %s", host))
    # Then the record is exactly one line, with the character written as its escape
    assert line.splitlines() == [line]
    assert TEXT_LINE.match(line), line
    assert line.endswith(f"services.r2_offload: SECURITY: refused host evil{escaped}2026-01-01T00:00:00.000Z "
                         "INFO [1] app: fake line")


@pytest.mark.parametrize("char, escaped", FORGING_CHARACTERS, ids=IDS)
def test_a_forged_host_stays_on_the_one_json_line_of_its_record_escaped(char, escaped):
    line = ServiceFormatter("json").format(record("SECURITY: refused host %s", f"evil{char}INFO fake line"))
    assert line.splitlines() == [line]
    assert json.loads(line)["message"] == f"SECURITY: refused host evil{escaped}INFO fake line"


def test_the_issues_example_is_one_line_in_both_formats():
    entry = record("SECURITY: refused host %s", "evil\u2028INFO fake line")
    text = ServiceFormatter("text").format(entry)
    raw_json = ServiceFormatter("json").format(entry)
    assert text.endswith("SECURITY: refused host evil\\u2028INFO fake line") and len(text.splitlines()) == 1
    assert len(raw_json.splitlines()) == 1
    assert json.loads(raw_json)["message"] == "SECURITY: refused host evil\\u2028INFO fake line"


@pytest.mark.parametrize("kind", ["text", "json"])
def test_a_control_in_the_message_template_itself_is_escaped_too(kind):
    line = ServiceFormatter(kind).format(record("EMAIL: subject\u2029forged"))
    assert line.splitlines() == [line]
    assert "EMAIL: subject\\u2029forged" in (line if kind == "text" else json.loads(line)["message"])


@pytest.mark.parametrize("kind", ["text", "json"])
def test_printable_text_is_left_exactly_as_it_was(kind):
    message = "EMAIL: delivered «Résumé» 日本語 \\x0a tab-free C:\\path 100%"
    line = ServiceFormatter(kind).format(record("%s", message))
    assert (line if kind == "text" else json.loads(line)["message"]).endswith(message)


def test_masking_and_redaction_still_apply_before_escaping():
    register_secrets(["imap-pw-Lr08-secret"])
    line = ServiceFormatter("text").format(record("IMAP: %s\n%s", "imap-pw-Lr08-secret", "john.doe@example.com"))
    assert line.endswith("IMAP: ***\\x0aj***@example.com")


def test_a_text_traceback_keeps_its_lines_but_none_can_pass_for_a_record():
    # Given an exception whose message carries a forged record after a newline, and a terminal escape
    exc_info = raised("bad host evil\n2026-01-01T00:00:00.000Z INFO [1] app: fake\x1b[2K\u2028x")
    # When it is logged with its traceback in the text format
    lines = ServiceFormatter("text").format(record("EMAIL: unexpected", level=logging.ERROR,
                                                   exc_info=exc_info)).split("\n")
    # Then the record's first line is the message, the traceback follows, readable, on marked continuation lines
    assert TEXT_LINE.match(lines[0]) and lines[0].endswith("EMAIL: unexpected")
    assert lines[1] == f"{log_setup.TRACEBACK_PREFIX}Traceback (most recent call last):"
    assert all(line.startswith(log_setup.TRACEBACK_PREFIX) for line in lines[1:])
    assert not any(TEXT_LINE.match(line) for line in lines[1:])
    # and no other line break or control survives inside a line
    assert "\n".join(lines).splitlines() == lines
    assert f"{log_setup.TRACEBACK_PREFIX}2026-01-01T00:00:00.000Z INFO [1] app: fake\\x1b[2K\\u2028x" in lines


def test_a_json_traceback_is_escaped_inside_its_lines_and_stays_one_record():
    exc_info = raised("bad host evil\x85fake\u2028line")
    raw = ServiceFormatter("json").format(record("EMAIL: unexpected", level=logging.ERROR, exc_info=exc_info))
    assert raw.splitlines() == [raw]
    exc = json.loads(raw)["exc"]
    assert exc.startswith("Traceback (most recent call last):")
    assert "ValueError: bad host evil\\x85fake\\u2028line" in exc


def test_a_forged_logger_name_cannot_break_a_json_line_either():
    name = "plugin\u2028fake"
    entry = logging.LogRecord(name, logging.INFO, __file__, 1, "hello", (), None)
    raw = ServiceFormatter("json").format(entry)
    assert raw.splitlines() == [raw]
    assert json.loads(raw)["logger"] == "plugin\\u2028fake"


@pytest.mark.parametrize("code_point", [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029])
def test_escape_controls_writes_every_control_and_separator_as_its_escape(code_point):
    escaped = escape_controls(f"a{chr(code_point)}b")
    expected = f"\\x{code_point:02x}" if code_point < 0x100 else f"\\u{code_point:04x}"
    assert escaped == f"a{expected}b"
