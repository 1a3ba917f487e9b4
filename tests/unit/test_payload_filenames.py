"""``original_filename`` is a safe display name (issue 16 defect 6): whatever the Worker reported (its answer, the
source's Content-Disposition), the webhook carries no path, no control or bidirectional character and at most 255
UTF-8 bytes, cut at a character boundary with the extension kept; a name with nothing left is null."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from email_processing.orchestrator import OffloadedLink
from email_processing.parsing import ParsedEmail
from email_processing.payload import FILENAME_MAX_BYTES, build_payload, safe_filename
from harness.contract import validate_webhook_body

BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def parsed() -> ParsedEmail:
    return ParsedEmail(message_id="names@example.com", subject="Files", date_header="Tue, 03 Jun 2025 10:00:00 +0200",
                       from_header="Jane <jane@example.com>", sender_email="jane@example.com",
                       text_plain="Hello", html="", html_truncated=False, text_truncated=False, defects=(),
                       body_head=b"Hello")


def entry_for(name: str | None) -> dict:
    link = OffloadedLink("dropbox", "https://www.dropbox.com/s/aaa/x?dl=0", "https://www.dropbox.com/s/aaa/x?dl=1",
                         "https://r2.example/dropbox/x", name)
    return build_payload(parsed(), [link], "2025-06-03T08:00:00Z")["delivery_links"][0]


@pytest.mark.parametrize("name", ["Project Files.zip", "Brand Assets été.zip", "ep04_master.mov", "a..b.tar.gz",
                                  ".bashrc", "日本語の資料.pdf", "👩\u200d💻 notes.txt"])
def test_an_ordinary_name_is_passed_as_it_is(name: str):
    assert entry_for(name)["original_filename"] == name


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\Windows\\win.ini", "win.ini"),
    ("/absolute/path/cut.mov", "cut.mov"),
    ("folder/sub\\mixed/final.wav", "final.wav"),
    ("C:\\Users\\x\\render.mov", "render.mov"),
])
def test_path_separators_and_parent_components_are_removed(name: str, expected: str):
    assert entry_for(name)["original_filename"] == expected


@pytest.mark.parametrize("name", ["..", ".", "dir/", "../..", "a/..", "/", "\\", ""])
def test_a_name_that_is_only_a_path_is_null(name: str):
    assert entry_for(name)["original_filename"] is None


def test_bidirectional_overrides_and_isolates_are_removed():
    # "invoice<RLO>gpj.exe" shows as "invoiceexe.jpg"
    assert entry_for("invoice\u202egpj.exe")["original_filename"] == "invoicegpj.exe"
    assert entry_for(f"a{BIDI_CONTROLS}b.zip")["original_filename"] == "ab.zip"


def test_control_characters_are_removed():
    assert entry_for("a\x00b\tc\nd\re\x1b[31mf\x7f\x85\u2028g.zip")["original_filename"] == "abcde[31mfg.zip"


@pytest.mark.parametrize("name", ["\u202e", "\u202e\u202c\x00", "   ", "\n\t", "..\u202e", "x/\u2066.\u2069."])
def test_a_name_with_nothing_left_after_cleaning_is_null(name: str):
    assert entry_for(name)["original_filename"] is None


def test_a_long_name_is_cut_to_255_utf8_bytes_at_a_character_boundary_keeping_its_extension():
    for stem_char in ("a", "é", "日", "😀"):
        name = safe_filename(stem_char * 400 + ".mov")
        assert name is not None
        encoded = name.encode("utf-8")
        assert len(encoded) <= FILENAME_MAX_BYTES and len(encoded) > FILENAME_MAX_BYTES - 4
        assert name.endswith(".mov") and set(name[:-4]) == {stem_char}


def test_a_name_of_exactly_255_bytes_is_kept_whole():
    name = "é" * 125 + "x.zip"  # 250 + 5 bytes
    assert len(name.encode()) == 255
    assert safe_filename(name) == name


def test_a_suffix_too_long_to_be_an_extension_is_cut_like_the_rest():
    name = safe_filename("a." + "b" * 400)
    assert name == ("a." + "b" * 400)[:255]


def test_the_hostile_name_never_reaches_the_body_raw():
    hostile = "../../" + "\u202e" + "x" * 300 + "\x00.sh"
    body = build_payload(parsed(), [OffloadedLink("dropbox", "https://www.dropbox.com/s/aaa/x?dl=0",
                                                  "https://www.dropbox.com/s/aaa/x?dl=1", "https://r2.example/x",
                                                  hostile)], "2025-06-03T08:00:00Z")
    text = json.dumps(body, ensure_ascii=False)
    assert hostile not in text and "\u202e" not in text and "../" not in text and "\\u0000" not in text
    assert body["delivery_links"][0]["original_filename"] == "x" * 252 + ".sh"
    validate_webhook_body(body)


def _has_unsafe_character(name: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in BIDI_CONTROLS or c in "/\\" for c in name)


@settings(max_examples=400, deadline=None)
@given(name=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400)
       | st.text(alphabet="./\\ a\u202e\x00é😀", max_size=300))
def test_any_name_comes_out_safe_and_cleaning_it_again_changes_nothing(name: str):
    cleaned = safe_filename(name)
    if cleaned is None:
        return
    assert cleaned and cleaned not in (".", "..")
    assert not _has_unsafe_character(cleaned)
    assert len(cleaned.encode("utf-8")) <= FILENAME_MAX_BYTES
    assert cleaned == cleaned.strip()
    assert safe_filename(cleaned) == cleaned


@settings(max_examples=150, deadline=None)
@given(name=st.text(alphabet=st.characters(), max_size=300))
def test_any_name_gives_a_body_the_schema_accepts(name: str):
    link = OffloadedLink("dropbox", "https://www.dropbox.com/s/aaa/x?dl=0", "https://www.dropbox.com/s/aaa/x?dl=1",
                         "https://r2.example/dropbox/x", name)
    validate_webhook_body(build_payload(parsed(), [link], "2025-06-03T08:00:00Z"))
