"""Pure parsing of the Google Drive resolver: file ids from every link shape, the virus-scan page's form, the
confirmed URL, and file names from Content-Disposition (no socket)."""

import pytest

from services.resolvers.gdrive import confirmed_url, download_path, drive_file_id, read_warning_page
from services.resolvers.share_links import file_name_from_disposition

ID = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"

PAGE = f"""<html><body><p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id={ID}">R&amp;D
plan.zip</a> (1.5G)</span> is too large for Google to scan for viruses.</p>
<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">
<input type="submit" id="uc-download-link" value="Download anyway"/>
<input type="hidden" name="id" value="{ID}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="0b5c-11ee">
</form></body></html>"""


@pytest.mark.parametrize("url", [f"https://drive.google.com/file/d/{ID}/view?usp=sharing",
                                 f"https://drive.google.com/u/1/file/d/{ID}/view",
                                 f"https://drive.google.com/open?id={ID}",
                                 f"https://docs.google.com/uc?export=download&id={ID}",
                                 f"https://docs.google.com/a/example.com/file/d/{ID}/edit",
                                 f"https://drive.usercontent.google.com/download?id={ID}&export=download"])
def test_the_file_id_is_read_from_every_file_link_shape(url):
    assert drive_file_id(url) == ID


def test_a_link_without_a_plausible_id_has_none():
    assert drive_file_id("https://drive.google.com/open?id=short") is None


def test_the_download_path_keeps_the_resource_key():
    assert download_path(ID, "0-Ab") == f"/download?id={ID}&export=download&resourcekey=0-Ab"
    assert download_path(ID, None) == f"/download?id={ID}&export=download"


def test_the_warning_page_yields_its_form_and_the_file_name():
    page = read_warning_page(PAGE)

    assert page.action == "https://drive.usercontent.google.com/download"
    assert page.fields == [("id", ID), ("export", "download"), ("confirm", "t"), ("uuid", "0b5c-11ee")]
    assert page.name == "R&D plan.zip"
    assert confirmed_url(page, "https://drive.usercontent.google.com/download?id=x") == \
        f"https://drive.usercontent.google.com/download?id={ID}&export=download&confirm=t&uuid=0b5c-11ee"


def test_a_page_without_the_download_form_gives_no_confirmed_url():
    page = read_warning_page("<html><form id='other'><input type='hidden' name='id' value='x'></form></html>")

    assert confirmed_url(page, "https://drive.usercontent.google.com/") is None


@pytest.mark.parametrize("value, name", [
    ('attachment; filename="report.pdf"', "report.pdf"),
    ("attachment; filename=\"na?ve.txt\"; filename*=UTF-8''na%C3%AFve.txt", "naïve.txt"),
    ('attachment; filename="../../etc/passwd"', "passwd"),
    ("inline", None), (None, None)])
def test_the_file_name_comes_from_content_disposition(value, name):
    assert file_name_from_disposition(value) == name
