"""Golden corpus: every message in tests/corpus/ parses, and matches its expected result (``<file>.json``).

``real/`` holds the public samples of ../shared/corpus (see tests/corpus/NOTICE.md), ``synthetic/`` the provider
notifications written by tests/corpus/make_synthetic.py with hand-written expectations.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from email_processing.html_text import html_to_text_and_hrefs
from email_processing.links import extract_delivery_links
from email_processing.orchestrator import NullOffloader, process_email
from email_processing.parsing import parse_message

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MESSAGES = sorted(
    path for path in CORPUS.rglob("*")
    if path.is_file() and path.suffix not in (".json", ".md", ".py") and path.parent != CORPUS
)


def _id(path: Path) -> str:
    return str(path.relative_to(CORPUS))


def test_the_corpus_has_real_and_synthetic_messages_each_with_an_expectation():
    assert len([p for p in MESSAGES if "real" in p.parts]) >= 100
    assert len([p for p in MESSAGES if "synthetic" in p.parts]) >= 14
    missing = [_id(p) for p in MESSAGES if not Path(str(p) + ".json").is_file()]
    assert missing == []


@pytest.mark.parametrize("path", MESSAGES, ids=_id)
def test_message_matches_its_golden_parse(path: Path):
    # Given a corpus message and its expected parse result
    expected = json.loads(Path(str(path) + ".json").read_text("utf-8"))
    # When it is parsed and its delivery links are extracted
    parsed = parse_message(path.read_bytes())
    text, hrefs = html_to_text_and_hrefs(parsed.html)
    links = extract_delivery_links(parsed.text_plain + "\n" + text, hrefs, html_source=parsed.html)
    # Then subject, sender, links and truncation flags are the expected ones
    if expected.get("subject_prefix_only"):
        assert parsed.subject.startswith(expected["subject"])
    else:
        assert parsed.subject == expected["subject"]
    assert parsed.sender_email == expected["sender_email"]
    assert [{"provider": link.provider, "raw_url": link.raw_url, "direct_url": link.direct_url} for link in links] \
        == expected["links"]
    assert parsed.html_truncated is expected["html_truncated"]
    assert parsed.text_truncated is expected["text_truncated"]


@pytest.mark.parametrize("path", MESSAGES, ids=_id)
def test_every_corpus_message_goes_through_the_whole_pure_path_without_exception(path: Path):
    # Robustness: parse, decision and a JSON-serialisable payload for every message, however broken.
    parsed = parse_message(path.read_bytes())
    result = process_email(parsed, received_at="2025-01-01T00:00:00Z", sender_allowlist=(),
                           allow_without_links=True, offloader=NullOffloader())
    json.dumps(result.payload, ensure_ascii=False).encode("utf-8")
    assert result.decision == "send"
    assert len(result.email_id) == 32
