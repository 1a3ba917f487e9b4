"""An anchor whose text is its URL shortened with an ellipsis is one link, not two (found by the real-world recall
set: Google Docs and chat clients shorten the URL they show)."""

from __future__ import annotations

from email_processing.links import extract_delivery_links

FULL = "https://www.dropbox.com/s/kqbk7ttolh2n3eb/IQR_20200421_040653_screenshot.png"


def test_the_shortened_text_of_an_anchor_is_not_a_second_link():
    for shown in (FULL[:40] + "…", FULL[:40] + "..."):
        links = extract_delivery_links(f"Files: {shown}", [FULL])
        assert [link.raw_url for link in links] == [FULL]


def test_a_link_followed_by_the_ellipsis_of_a_sentence_is_kept():
    links = extract_delivery_links("Here they are https://we.tl/t-DXSWKBP5Rk... more tomorrow", [])
    assert [link.raw_url for link in links] == ["https://we.tl/t-DXSWKBP5Rk"]


def test_a_shortened_link_that_begins_no_other_link_is_kept_as_written():
    shown = FULL[:40] + "…"
    links = extract_delivery_links(f"Files: {shown}", ["https://we.tl/t-DXSWKBP5Rk"])
    assert [link.raw_url for link in links] == ["https://we.tl/t-DXSWKBP5Rk", FULL[:40]]
