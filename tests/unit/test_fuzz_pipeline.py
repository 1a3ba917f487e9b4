"""Pipeline fuzzer (issue 15): real corpus emails, damaged, through the whole pure path.

Each example takes one message of tests/corpus/ (the public samples of real/ and the provider notifications of
synthetic/), applies one to three mutations of tests/fixtures/email_mutations.py (truncation, MIME boundary damage,
header noise, charset and transfer-encoding lies, NUL bytes, line ends, byte rot) and runs parse_message →
process_email (NullOffloader) → the body as delivered (``json.dumps(ensure_ascii=False)`` in UTF-8) → the webhook
contract. Every run must end in an end state (send, or skip with its reason) within a generous per-email budget.
The per-email cost of a mutation, as a ratio to the unmutated email, is measured by bench/bench_fuzz.py, not here.

Deterministic: ``derandomize=True`` and no example database, so CI runs the same 200 examples every time. A failure
prints the corpus path and the mutations; ``mutate(path.read_bytes(), [Mutation(...)])`` rebuilds the input.
The defects found so far are pinned below the properties as xfail tests with their minimal inputs.
"""

from __future__ import annotations

import base64
import bz2
import functools
import json
import time
import tracemalloc
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

from email_processing.orchestrator import (
    REASON_NO_DELIVERY_LINKS,
    REASON_SENDER_AMBIGUOUS,
    REASON_SENDER_NOT_ALLOWED,
    NullOffloader,
    ProcessResult,
    process_email,
)
from email_processing.parsing import ParsedEmail, parse_message
from email_processing.payload import received_at_from_date_header
from harness.contract import validate_webhook_body
from tests.fixtures.email_mutations import (
    AT_SCALE,
    KINDS,
    MAX_NOISE,
    MAX_PICK,
    MUTATION_KINDS,
    Mutation,
    mutate,
)

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MESSAGES = sorted(
    path for path in CORPUS.rglob("*")
    if path.is_file() and path.suffix not in (".json", ".md", ".py") and path.parent != CORPUS
)
NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)  # received_at when a damaged Date header gives none
# Generous: the slowest unmutated corpus email (1.6 MB, HTML over the cap) takes about 60 ms here, the slowest of
# 24,000 random damaged runs (1-5 stacked mutations, shared machine) 0.8 s. Over this budget is a hang, not noise.
EXAMPLE_BUDGET_SECONDS = 10.0
FUZZ = settings(max_examples=200, derandomize=True, database=None, deadline=None)
ALLOWLISTS = st.sampled_from([(), ("@example.com",), ("nobody@example.invalid",)])


@functools.lru_cache(maxsize=None)
def corpus_bytes(path: Path) -> bytes:
    return path.read_bytes()


@functools.lru_cache(maxsize=None)
def undamaged(path: Path) -> ParsedEmail:
    return parse_message(corpus_bytes(path))


def mutations(kinds: tuple[str, ...] = MUTATION_KINDS) -> st.SearchStrategy[Mutation]:
    return st.builds(Mutation, kind=st.sampled_from(kinds), at=st.integers(0, AT_SCALE - 1),
                     pick=st.integers(0, MAX_PICK), noise=st.binary(max_size=MAX_NOISE))


@dataclass(frozen=True)
class PipelineRun:
    result: ProcessResult
    body: bytes
    seconds: float


def run_pipeline(raw: bytes, *, allow_without_links: bool, sender_allowlist: tuple[str, ...]) -> PipelineRun:
    """What the service does with one email, minus the network: parse, decide, build and serialise the body."""
    started = time.monotonic()
    parsed = parse_message(raw)
    received_at = received_at_from_date_header(parsed.date_header, now=NOW)
    result = process_email(parsed, received_at=received_at, sender_allowlist=sender_allowlist,
                           allow_without_links=allow_without_links, offloader=NullOffloader())
    body = json.dumps(result.payload, ensure_ascii=False).encode("utf-8")
    return PipelineRun(result, body, time.monotonic() - started)


def assert_end_state(run: PipelineRun, *, allow_without_links: bool, sender_allowlist: tuple[str, ...]) -> None:
    result = run.result
    assert run.seconds < EXAMPLE_BUDGET_SECONDS, f"one email took {run.seconds:.1f} s (watchdog)"
    if result.decision == "send":
        assert result.reason is None
    else:
        assert result.decision == "skip"
        assert result.reason in (REASON_SENDER_AMBIGUOUS, REASON_SENDER_NOT_ALLOWED, REASON_NO_DELIVERY_LINKS)
    if result.reason in (REASON_SENDER_AMBIGUOUS, REASON_SENDER_NOT_ALLOWED):
        assert sender_allowlist
    if result.reason == REASON_SENDER_AMBIGUOUS:
        assert result.payload["sender_email"] == ""
    if result.reason == REASON_NO_DELIVERY_LINKS:
        assert not allow_without_links and result.links == ()
    validate_webhook_body(run.body)
    delivered = json.loads(run.body)
    assert delivered["event_id"] == result.event_id
    assert len(delivered["delivery_links"]) == len(result.links)


# --- properties --------------------------------------------------------------------------------------------------

# Not marked for defect 4: these mutations reach a lone surrogate only rarely (1 of 24,000 random runs: a body
# relabelled UTF-7 decoded to '\udaa1'), and none of the 200 derandomized examples does; the property below does.
@pytest.mark.timeout(90)  # the watchdog of the whole property: a hung example ends here, with a stack dump
@FUZZ
@given(path=st.sampled_from(MESSAGES), damage=st.lists(mutations(), min_size=1, max_size=3),
       allow_without_links=st.booleans(), sender_allowlist=ALLOWLISTS)
def test_a_damaged_corpus_email_ends_in_send_or_skip_with_a_body_the_contract_accepts(
        path, damage, allow_without_links, sender_allowlist):
    # Given a real email damaged by one to three mutations
    raw = mutate(corpus_bytes(path), damage)
    note(f"{len(raw)} bytes after mutation")
    # When the pipeline handles it
    run = run_pipeline(raw, allow_without_links=allow_without_links, sender_allowlist=sender_allowlist)
    # Then it ends in send or skip (with a reason that fits the settings), in time, with a valid UTF-8 JSON body
    assert_end_state(run, allow_without_links=allow_without_links, sender_allowlist=sender_allowlist)


BELOW_THE_HEADERS = mutations(("charset_lie", "boundary_damage"))


@pytest.mark.timeout(90)
@FUZZ
@given(path=st.sampled_from(MESSAGES), damage=st.lists(BELOW_THE_HEADERS, min_size=1, max_size=3))
def test_charset_lies_and_boundary_damage_never_lose_the_message_id(path, damage):
    # Given a real email with a Message-ID, whose parts lie about their charset or whose boundaries are damaged
    original = undamaged(path)
    assume(original.message_id is not None and original.message_id.isascii())
    # When it is parsed
    parsed = parse_message(mutate(corpus_bytes(path), damage))
    # Then one bad part did not cost the whole email: the identity (and so deduplication) is unchanged
    assert parsed.message_id == original.message_id


SURROGATE_BAIT = st.tuples(mutations(("lone_surrogate_bait",)), st.lists(mutations(), max_size=2)).map(
    lambda pair: [pair[0], *pair[1]])


@pytest.mark.timeout(90)
@settings(FUZZ)
@given(path=st.sampled_from(MESSAGES), damage=SURROGATE_BAIT, allow_without_links=st.booleans())
def test_text_that_decodes_to_lone_surrogates_still_gives_a_utf8_body(path, damage, allow_without_links):
    # Given a real email with a UTF-7 or unicode-escape spelling of a lone surrogate in a header or a body
    raw = mutate(corpus_bytes(path), damage)
    # When the pipeline handles it
    run = run_pipeline(raw, allow_without_links=allow_without_links, sender_allowlist=())
    # Then the body is still UTF-8 JSON the contract accepts (today: UnicodeEncodeError in json → UTF-8)
    assert_end_state(run, allow_without_links=allow_without_links, sender_allowlist=())


# --- the mutations themselves: total, and never a no-op ------------------------------------------------------------

@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(raw=st.binary(max_size=300) | st.sampled_from([b"", b"\n", b"\r\n\r\n", b"Subject: x\n\nbody"]),
       damage=st.lists(mutations(tuple(KINDS)), min_size=1, max_size=4))
def test_every_mutation_is_total_on_arbitrary_bytes(raw, damage):
    assert isinstance(mutate(raw, damage), bytes)


MULTIPART_SAMPLE = CORPUS / "real" / "mikel-mail" / "attachment_nonascii_filename.eml"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_mutation_kind_changes_a_real_multipart_email(kind):
    # A mutation that silently does nothing would make the fuzzer vacuous.
    raw = corpus_bytes(MULTIPART_SAMPLE)
    changed = [mutate(raw, [Mutation(kind, at=at, pick=pick, noise=b"\x80noise")]) != raw
               for at in (AT_SCALE // 10, AT_SCALE // 2, AT_SCALE * 9 // 10) for pick in range(24)]
    assert sum(changed) >= len(changed) * 3 // 4


# --- defects found (minimal inputs; another engineer fixes production code) -----------------------------------------

HEADERS = (b"From: Alice <alice@example.com>\r\nSubject: kept\r\nMessage-ID: <kept@example.com>\r\n"
           b"MIME-Version: 1.0\r\n")
LINK = b"https://wetransfer.com/downloads/aaaaaaaaaa/bbbbbbbbbb/cccccc"


def _text_email(charset: bytes, body: bytes, *, transfer_encoding: bytes = b"7bit", end: bytes = b"\r\n") -> bytes:
    return (HEADERS + b"Content-Type: text/plain; charset=" + charset + b"\r\nContent-Transfer-Encoding: " +
            transfer_encoding + b"\r\n\r\n" + body + end)


# Found by test_charset_lies_and_boundary_damage_never_lose_the_message_id (with the codec names allowed):
# decode_bytes hands the body to a bytes-to-bytes Python codec, gets bytes back, and _add_text's str operations
# raise TypeError; parse_message's catch-all then replaces the WHOLE email by an empty one (no subject, sender,
# Message-ID or links: with ALLOW_CUSTOM_WEBHOOK_WITHOUT_LINKS=false a real delivery email is skipped as
# no_delivery_links). The same happens to an RFC 2047 word in the Subject (decode_header_value joins bytes).
CODEC_LIES = [
    pytest.param(_text_email(b"quopri", b"Files: " + LINK), id="body-charset-quopri"),
    pytest.param(_text_email(b"hex", LINK.hex().encode(), end=b""), id="body-charset-hex-at-the-end"),
    pytest.param(_text_email(b"base64", b"RmlsZXM6IA==" + b"\r\n" + LINK), id="body-charset-base64"),
    pytest.param(HEADERS.replace(b"Subject: kept", b"Subject: =?quopri?Q?kept?=") +
                 b"Content-Type: text/plain\r\n\r\nFiles: " + LINK + b"\r\n", id="subject-word-charset-quopri"),
]


@pytest.mark.parametrize("raw", CODEC_LIES)
def test_a_charset_naming_a_bytes_codec_does_not_empty_the_email(raw):
    parsed = parse_message(raw)
    assert parsed.message_id == "kept@example.com"
    assert parsed.sender_email == "alice@example.com"
    assert not any(defect.startswith("unparseable") for defect in parsed.defects)


BOMB_BYTES = 32 * 1024 * 1024


def test_a_tiny_part_labelled_bz2_is_not_decompressed_into_memory():
    # Given a 242-byte email whose text part, labelled charset=bz2, is 32 MiB of "a" compressed (46 bytes)
    compressed = bz2.compress(b"a" * BOMB_BYTES)
    raw = _text_email(b"bz2", base64.encodebytes(compressed), transfer_encoding=b"base64")
    assert len(raw) < 250
    # When it is parsed
    tracemalloc.start()
    try:
        parse_message(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Then memory stays far below the bomb (the text cap is 1 MiB; RAW_LIMIT_FACTOR allows 4 MiB of raw bytes)
    assert peak < 16 * 1024 * 1024


def _nested(depth: int) -> bytes:
    """An email whose text part sits ``depth`` multiparts deep, none of them closed."""
    levels = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (level, level)
                      for level in range(depth))
    return HEADERS + levels + b"Content-Type: text/plain\r\n\r\nFiles: " + LINK + b"\r\n"


def test_a_text_part_1000_multiparts_deep_keeps_the_headers_and_the_link():
    # Found past the fuzzer's nesting range (it nests up to 506 levels: ~0.5 s each, quadratic in the depth); the
    # stdlib parser's recursion gives out, the headers are parsed flat and the body is read as one text part
    parsed = parse_message(_nested(1000))
    assert parsed.message_id == "kept@example.com"
    assert parsed.sender_email == "alice@example.com"
    assert LINK.decode() in parsed.text_plain
    assert "unparseable:RecursionError" in parsed.defects


def test_a_text_part_500_multiparts_deep_keeps_the_headers_and_the_link():
    # The depth the fuzzer reaches still parses (the pinned defect above starts between 500 and 1000)
    parsed = parse_message(_nested(500))
    assert (parsed.message_id, parsed.sender_email) == ("kept@example.com", "alice@example.com")
    assert LINK.decode() in parsed.text_plain


PUNYCODE_BODY = b"-" + b"ba" * 60_000  # 120 KB of valid punycode digits


def test_a_120_kb_body_labelled_punycode_is_never_run_through_the_punycode_decoder():
    # Given a text part labelled charset=punycode (Python's decoder is quadratic: 0.7 s at 120 KB, minutes at 4 MiB)
    raw = _text_email(b"punycode", PUNYCODE_BODY)
    # When it is parsed, then the label counts as an unknown charset and the text is read as UTF-8
    parsed = parse_message(raw)
    assert parsed.text_plain == PUNYCODE_BODY.decode("ascii")
    assert "unknown_charset:punycode" in parsed.defects
