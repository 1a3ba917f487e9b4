"""Pure transforms of the OneDrive resolver: the onedrive.live.com page forms and their /download form (no socket)."""

import pytest

from services.resolvers.onedrive import is_onedrive_page, onedrive_direct_url
from services.resolvers.sharepoint import is_microsoft_sign_in


@pytest.mark.parametrize("url, direct", [
    ("https://onedrive.live.com/redir?resid=4F2A!1234&authkey=!Ab&ithint=file%2cpdf",
     "https://onedrive.live.com/download?resid=4F2A!1234&authkey=!Ab&ithint=file%2cpdf"),
    ("https://onedrive.live.com/embed?cid=4F2A&resid=4F2A%211234&authkey=!Ab",
     "https://onedrive.live.com/download?cid=4F2A&resid=4F2A%211234&authkey=!Ab"),
    ("https://onedrive.live.com/?id=4F2A%211234&cid=4F2A&authkey=!Ab",
     "https://onedrive.live.com/download?resid=4F2A%211234&cid=4F2A&authkey=!Ab"),
    ("https://onedrive.live.com/view.aspx?resid=4F2A!1234&authkey=!Ab",
     "https://onedrive.live.com/download?resid=4F2A!1234&authkey=!Ab")])
def test_every_page_form_has_a_download_form_with_the_same_item(url, direct):
    assert is_onedrive_page(url)
    assert onedrive_direct_url(url) == direct


@pytest.mark.parametrize("url", ["https://onedrive.live.com/about/en-us/", "https://1drv.ms/u/s!AbCdEf"])
def test_other_paths_are_not_page_forms(url):
    assert not is_onedrive_page(url)


@pytest.mark.parametrize("url, sign_in", [("https://login.live.com/login.srf", True),
                                          ("https://login.microsoftonline.com/common/oauth2/authorize", True),
                                          ("https://contoso.sharepoint.com/_forms/default.aspx?ReturnUrl=x", True),
                                          ("https://login.live.com.evil.example/", False),
                                          ("https://onedrive.live.com/download?resid=x", False)])
def test_microsoft_sign_in_pages_are_recognised_by_host_and_path(url, sign_in):
    assert is_microsoft_sign_in(url) is sign_in
