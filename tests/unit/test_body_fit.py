"""Body caps (issue 17, "Delivery per target"): a body within the target's cap goes unchanged; a larger one has its
text truncated (``email_content_truncated``), then its per-file details dropped; one that still does not fit is
refused ``body_too_large``; nothing over the cap is ever returned, and every shrunk body keeps the webhook schema."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import email_processing.body_fit
from email_processing.body_fit import BODY_TOO_LARGE, DETAIL_KEYS, FitResult, fit_body, without_link_details
from email_processing.orchestrator import OffloadedLink
from email_processing.parsing import ParsedEmail
from email_processing.payload import FILENAME_MAX_BYTES, body_preview, build_payload, for_target, payload_bytes
from harness.contract import validate_webhook_body


def parsed(text: str, **changes: Any) -> ParsedEmail:
    base: dict[str, Any] = dict(message_id="abc@example.com", subject="Files",
                                date_header="Tue, 03 Jun 2025 10:00:00 +0200", from_header="Jane <jane@example.com>",
                                sender_email="jane@example.com",
                                text_plain=text, html="", html_truncated=False, text_truncated=False, defects=(),
                                body_head=b"Hello")
    base.update(changes)
    return ParsedEmail(**base)


def copied_link(index: int, filename: str | None = None) -> OffloadedLink:
    return OffloadedLink("dropbox", f"https://www.dropbox.com/s/k{index}/file.zip?dl=0",
                         f"https://www.dropbox.com/s/k{index}/file.zip?dl=1",
                         r2_url=f"https://files.example.test/dropbox/{index}.zip",
                         original_filename=filename or f"{index}-" + "n" * 200 + ".zip")


def source_link(index: int) -> OffloadedLink:
    return OffloadedLink("wetransfer", f"https://we.tl/t-{index:08d}", f"https://we.tl/t-{index:08d}")


def payload(text: str = "Hello there", links: list[OffloadedLink] | None = None, **changes: Any) -> dict[str, Any]:
    built = build_payload(parsed(text, **changes), links if links is not None else [copied_link(0), source_link(1)],
                          "2025-06-03T08:00:00Z", html_text="")
    return for_target(built, "make-folders")


def size(body: dict[str, Any]) -> int:
    return len(payload_bytes(body))


# --- within the cap -----------------------------------------------------------------------------------------------

def test_a_body_within_the_cap_is_returned_unchanged():
    original = payload()
    result = fit_body(original, 1_000_000)
    assert result == FitResult(body=payload_bytes(original), payload=original, shrunk=False, reason=None)
    assert result.payload is original


def test_a_body_of_exactly_the_cap_fits_and_one_byte_less_shrinks_it():
    original = payload("x" * 5000)
    assert fit_body(original, size(original)).shrunk is False
    assert fit_body(original, size(original) - 1).shrunk is True


def test_the_body_is_serialised_as_the_delivery_loop_serialises_it():
    original = payload("é" * 3000)
    result = fit_body(original, 4000)
    assert result.body is not None and result.payload is not None
    assert result.body == payload_bytes(result.payload)
    assert "é".encode() in result.body  # ensure_ascii=False: two bytes a character, not a six-byte escape


def test_the_size_is_measured_with_the_one_serialisation_function(monkeypatch):
    # Given a delivery loop that serialised differently (indented)
    def indented(body: dict) -> bytes:
        return json.dumps(body, ensure_ascii=False, indent=4).encode("utf-8")

    monkeypatch.setattr(email_processing.body_fit, "payload_bytes", indented)
    original = payload("word " * 2000)
    # When a body is fitted, Then its size is that of the bytes that function makes
    result = fit_body(original, 6000)
    assert result.body == indented(result.payload)
    assert 6000 - 5 <= len(result.body) <= 6000


# --- step 1: the text ----------------------------------------------------------------------------------------------

def test_an_oversized_body_has_its_text_cut_to_the_longest_prefix_that_fits():
    # Given a body of a 20 kB text and a cap of 8 kB
    original = payload("The quick brown fox. " * 1000)
    cap = 8000
    # When it is fitted
    result = fit_body(original, cap)
    # Then it fits, its text is a prefix of the original, flagged, and one more character would not fit
    assert result.body is not None and result.payload is not None and result.shrunk and result.reason is None
    assert len(result.body) <= cap
    content = result.payload["email_content"]
    assert original["email_content"].startswith(content) and 0 < len(content) < len(original["email_content"])
    assert result.payload["email_content_truncated"] is True
    longer = {**result.payload, "email_content": original["email_content"][:len(content) + 1],
              "bodyPreview": body_preview(original["email_content"][:len(content) + 1])}
    assert size(longer) > cap


@pytest.mark.parametrize("character", ["x", "é", "€", "😀", '"', "\\", "\x01", "\n"])
def test_the_text_is_cut_at_a_character_boundary_whatever_its_encoded_width(character):
    # Given characters that take 1 to 6 bytes in the body (UTF-8, or a JSON escape)
    original = payload("a" + (character + "b") * 2500)  # not only the character: the text is stripped
    cap = 3001
    result = fit_body(original, cap)
    assert result.body is not None and result.payload is not None
    assert len(result.body) <= cap
    decoded = json.loads(result.body.decode("utf-8"))  # valid UTF-8 JSON: no half character
    assert decoded == result.payload
    content = decoded["email_content"]
    assert content == original["email_content"][:len(content)]
    longer = original["email_content"][:len(content) + 1]
    assert size({**result.payload, "email_content": longer, "bodyPreview": body_preview(longer)}) > cap


def test_a_cut_text_gets_the_preview_of_what_is_left():
    original = payload("word " * 3000)
    emptied = size({**original, "email_content": "", "bodyPreview": "", "email_content_truncated": True})
    result = fit_body(original, emptied + 60)  # room for a few dozen characters of text and preview
    assert result.payload is not None
    content = result.payload["email_content"]
    assert len(content) < 200
    assert result.payload["bodyPreview"] == body_preview(content)


def test_a_text_cut_only_a_little_keeps_its_preview():
    original = payload("word " * 3000)
    result = fit_body(original, size(original) - 100)
    assert result.payload is not None
    assert result.payload["bodyPreview"] == original["bodyPreview"]


def test_cutting_the_text_keeps_the_link_details():
    original = payload("x" * 20_000)
    result = fit_body(original, 10_000)
    assert result.payload is not None
    assert result.payload["delivery_links"] == original["delivery_links"]


def test_the_payload_given_is_never_changed():
    original = payload("x" * 20_000, links=[copied_link(n) for n in range(20)])
    before = copy.deepcopy(original)
    fit_body(original, 10_000)
    fit_body(original, 3_000)
    fit_body(original, 1_024)
    assert original == before


# --- step 2: the link details ---------------------------------------------------------------------------------------

LINKS = [copied_link(n, filename=f"{n:02d}-" + "f" * (FILENAME_MAX_BYTES - 7) + ".zip") for n in range(40)]


def test_link_details_are_dropped_only_when_an_empty_text_does_not_fit():
    # Given 40 copied files with 255-byte names and a cap that an empty text with those names does not meet
    original = payload("x" * 5000, links=LINKS)
    with_names = size({**original, "email_content": "", "bodyPreview": "", "email_content_truncated": True})
    stripped = without_link_details(original)
    without_names = size({**stripped, "email_content": "", "bodyPreview": "", "email_content_truncated": True})
    cap = without_names + 1000
    assert cap < with_names
    # When it is fitted
    result = fit_body(original, cap)
    # Then the names are null, every link is kept with its URLs, and the text keeps what fits beside them
    assert result.payload is not None and result.body is not None and len(result.body) <= cap
    assert [link["original_filename"] for link in result.payload["delivery_links"]] == [None] * 40
    def urls(links: list[dict]) -> list[dict]:
        return [{key: value for key, value in link.items() if key != "original_filename"} for link in links]

    assert urls(result.payload["delivery_links"]) == urls(original["delivery_links"])
    # 1000 bytes for the text and its preview: 800 characters and a 200-character preview
    assert len(result.payload["email_content"]) == 800
    assert result.payload["email_content_truncated"] is True


def test_the_details_are_the_file_names_and_the_urls_stay():
    assert DETAIL_KEYS == ("original_filename", "files")
    [entry] = without_link_details(payload(links=[copied_link(3)]))["delivery_links"]
    assert entry == {"provider": "dropbox", "raw_url": "https://www.dropbox.com/s/k3/file.zip?dl=0",
                     "direct_url": "https://www.dropbox.com/s/k3/file.zip?dl=1",
                     "r2_url": "https://files.example.test/dropbox/3.zip", "original_filename": None,
                     "resolution": "none", "expires_at": None, "size_bytes": None, "file_count": None, "files": []}


def test_a_body_whose_details_alone_overflow_keeps_its_whole_text_once_they_are_dropped():
    # Given a short text and long names: without the names everything fits
    original = payload("short text", links=LINKS)
    cap = size(without_link_details(original)) + 10
    result = fit_body(original, cap)
    assert result.payload is not None and result.shrunk
    assert result.payload["email_content"] == "short text"
    assert result.payload["email_content_truncated"] is False  # nothing of the text was cut
    assert all(link["original_filename"] is None for link in result.payload["delivery_links"])


# --- step 3: refused ------------------------------------------------------------------------------------------------

def test_a_body_that_cannot_fit_is_refused_body_too_large():
    # Given 50 links whose URLs alone exceed the cap
    original = payload("text", links=[source_link(n) for n in range(50)])
    result = fit_body(original, 1024)
    assert result == FitResult(body=None, payload=None, shrunk=False, reason=BODY_TOO_LARGE)
    assert BODY_TOO_LARGE == "body_too_large"


def test_long_headers_are_not_cut_and_can_make_a_body_too_large():
    original = payload("text", links=[], subject="S" * 3000)
    assert fit_body(original, 2048).reason == BODY_TOO_LARGE


def test_a_body_without_email_content_is_fitted_by_its_details_or_refused():
    # an odd stored body: nothing to cut but the file names
    original = {key: value for key, value in payload("x", links=LINKS).items() if key != "email_content"}
    assert fit_body(original, size(without_link_details(original))).payload == without_link_details(original)
    assert fit_body(original, size(without_link_details(original)) - 1).reason == BODY_TOO_LARGE


# --- the webhook schema -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("room", ["half", "text_cut_to_nothing", "names_dropped", "names_dropped_text_cut"])
def test_every_shrunk_body_is_valid_against_the_webhook_schema(room):
    # Given a body with text in several scripts, copied and uncopied links, for a named target
    text = ("Bonjour, voici les fichiers — 😀 \"quoted\" \\ \t\n" * 2000)
    original = payload(text, links=[copied_link(n) for n in range(30)] + [source_link(n) for n in range(3)])
    validate_webhook_body(payload_bytes(original))
    emptied = {**original, "email_content": "", "bodyPreview": "", "email_content_truncated": True}
    cap = {"half": size(original) // 2, "text_cut_to_nothing": size(emptied),
           "names_dropped": size(without_link_details(emptied)),
           "names_dropped_text_cut": size(without_link_details(emptied)) + 500}[room]
    # When it is fitted to the cap
    result = fit_body(original, cap)
    # Then what would be sent is a valid webhook body within the cap
    assert result.body is not None and len(result.body) <= cap and result.shrunk
    validate_webhook_body(result.body)
    assert result.payload is not None
    names_kept = room in ("half", "text_cut_to_nothing")
    assert any(link["original_filename"] for link in result.payload["delivery_links"]) is names_kept


# --- cost -----------------------------------------------------------------------------------------------------------

def test_fitting_a_one_mebibyte_text_serialises_the_whole_body_a_few_times_only(monkeypatch):
    # Given a 1 MiB text (the payload's own cap) of mixed widths and a 5 kB cap
    original = payload(("abc é € 😀 " * 120_000)[:1_048_576 // 3])
    whole_bodies: list[int] = []
    real = email_processing.body_fit.payload_bytes

    def counting(body: dict) -> bytes:
        if "event_id" in body:
            whole_bodies.append(1)
        return real(body)

    monkeypatch.setattr(email_processing.body_fit, "payload_bytes", counting)
    started = time.perf_counter()
    result = fit_body(original, 5_000)
    elapsed = time.perf_counter() - started
    # Then the whole body is serialised a constant number of times (the probes measure the text alone)
    assert result.body is not None and len(result.body) <= 5_000
    assert len(whole_bodies) <= 4
    assert elapsed < 2.0


# --- property ---------------------------------------------------------------------------------------------------------

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=3000)


@settings(max_examples=150, deadline=None)
@given(text=texts, cap=st.integers(1024, 12_000), names=st.integers(0, 12))
def test_a_fitted_body_is_never_over_the_cap_and_keeps_the_longest_prefix(text, cap, names):
    original = payload(text, links=LINKS[:names])
    result = fit_body(original, cap)
    if result.reason == BODY_TOO_LARGE:
        assert result.body is None and result.payload is None
        assert size(without_link_details({**original, "email_content": "", "bodyPreview": ""})) > cap - 5
        return
    assert result.body is not None and result.payload is not None
    assert len(result.body) <= cap
    assert result.body == payload_bytes(result.payload)
    content = result.payload["email_content"]
    assert original["email_content"].startswith(content)
    if content != original["email_content"]:
        assert result.payload["email_content_truncated"] is True
        next_char = original["email_content"][:len(content) + 1]
        assert size({**result.payload, "email_content": next_char, "bodyPreview": body_preview(next_char)}) > cap
