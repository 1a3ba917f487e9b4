"""Link clean-up stays linear in the URL's length (issue 16 defect 2): a watchdog, not a timing assertion.

Stripping the trailing ``)`` of a sentence used to recount the parentheses and copy the URL for every character
stripped, so ~330 candidates of 8,100 ``)`` each (2.7 MB) took about 13 s on the benchmark machine (the pure path of
the 2.7 MB email about 7 s). Linear, both take a small fraction of a second; the watchdogs below leave a wide margin
for a slow machine and still stop the quadratic version. The behaviour of the clean-up is checked against the
obvious (quadratic) formulation on short strings.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from email_processing.links import extract_delivery_links
from email_processing.orchestrator import NullOffloader, process_email
from email_processing.parsing import parse_message

# Just under the 8192-character cap of a candidate: the longest string the clean-up ever sees. Every line names
# another link, so that no memo of a verdict spares the clean-up (each candidate is checked once per email).
PAREN_TAIL = ")" * 8100
ADVERSARIAL_BYTES = 2_700_000


def link_url(n: int) -> str:
    return f"https://we.tl/t-{n:010d}"


def adversarial_text(size: int = ADVERSARIAL_BYTES) -> str:
    lines = size // len(link_url(0) + PAREN_TAIL + "\n")
    return "".join(f"{link_url(n)}{PAREN_TAIL}\n" for n in range(lines))


@pytest.mark.timeout(6)  # linear: ~0.1 s here; the quadratic clean-up: ~13 s
def test_stripping_closing_parens_from_2_7_mb_of_url_lines_is_linear():
    text = adversarial_text()
    links = extract_delivery_links(text, [])
    assert [link.raw_url for link in links] == [link_url(n) for n in range(text.count("\n"))]


@pytest.mark.timeout(6)  # the whole pure path of such an email: ~0.2 s here (was ~7 s)
def test_the_pure_path_of_a_2_7_mb_email_of_paren_tailed_urls_is_linear():
    body = adversarial_text().replace("\n", "\r\n").encode("ascii")
    html = ("<html><body><p>" + adversarial_text(ADVERSARIAL_BYTES // 3) + "</p></body></html>").encode("ascii")
    raw = (b"From: a@example.com\r\nSubject: parens\r\nMessage-ID: <parens@example.com>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\n" + body + b"\r\n--b\r\nContent-Type: text/html\r\n\r\n"
           + html + b"\r\n--b--\r\n")
    result = process_email(parse_message(raw), received_at="2025-06-03T08:00:00Z", sender_allowlist=(),
                           allow_without_links=False, offloader=NullOffloader())
    assert result.decision == "send" and [link.raw_url for link in result.links] == [link_url(n) for n in range(50)]


# --- the clean-up does what it did -----------------------------------------------------------------------------

_TRAILING = ".,;:!?'\"*>}»…“”‘’"


def reference_strip(url: str) -> str:
    """The clean-up as first written (quadratic): drop trailing punctuation, and a closing bracket while the URL
    holds more of it than of its opener."""
    while url:
        last = url[-1]
        if last in _TRAILING:
            url = url[:-1]
        elif last == ")" and url.count("(") < url.count(")"):
            url = url[:-1]
        elif last == "]" and url.count("[") < url.count("]"):
            url = url[:-1]
        else:
            break
    return url


TAIL = st.text(alphabet="()[].,;:!?'\"*>}»…“”‘’a/", max_size=30)
PATH = st.text(alphabet="()[]ab/-._", max_size=20)


@settings(max_examples=300, deadline=None)
@given(path=PATH, tail=TAIL)
def test_trailing_punctuation_and_unbalanced_closers_are_dropped_as_before(path: str, tail: str):
    from email_processing.links import _strip_trailing

    url = f"https://we.tl/t-{path}{tail}"
    assert _strip_trailing(url) == reference_strip(url)


@pytest.mark.parametrize("text, expected", [
    ("(see https://www.dropbox.com/s/aaaaaaaaaaaaaaa/take(1).mov).", "https://www.dropbox.com/s/aaaaaaaaaaaaaaa/take(1).mov"),
    ("(https://we.tl/t-AAAAAAAAAA))).", "https://we.tl/t-AAAAAAAAAA"),
    ("https://we.tl/t-AAAAAAAAAA…”", "https://we.tl/t-AAAAAAAAAA"),
    ("https://www.dropbox.com/s/aaaaaaaaaaaaaaa/a(b)c).!", "https://www.dropbox.com/s/aaaaaaaaaaaaaaa/a(b)c"),
])
def test_a_sentence_around_a_link_is_cut_off_the_link(text: str, expected: str):
    assert [link.raw_url for link in extract_delivery_links(text, [])] == [expected]
