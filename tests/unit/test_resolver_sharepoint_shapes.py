"""Pure transform of the SharePoint resolver: a sharing link's download=1 form (no socket)."""

import pytest

from services.resolvers.sharepoint import sharepoint_direct_url


@pytest.mark.parametrize("url, direct", [
    ("https://contoso-my.sharepoint.com/:b:/g/personal/ana_contoso_com/EZx9kLm?e=Ab12Cd",
     "https://contoso-my.sharepoint.com/:b:/g/personal/ana_contoso_com/EZx9kLm?e=Ab12Cd&download=1"),
    ("https://contoso.sharepoint.com/:x:/s/Team/EQab12?e=Xy&download=0&web=1",
     "https://contoso.sharepoint.com/:x:/s/Team/EQab12?e=Xy&download=1"),
    ("https://contoso.sharepoint.com/:u:/r/sites/T/Shared%20Documents/a.zip?csf=1&web=1&e=8E",
     "https://contoso.sharepoint.com/:u:/r/sites/T/Shared%20Documents/a.zip?csf=1&e=8E&download=1"),
    ("https://contoso.sharepoint.com/sites/T/_layouts/15/guestaccess.aspx?share=EQab&e=Q",
     "https://contoso.sharepoint.com/sites/T/_layouts/15/guestaccess.aspx?share=EQab&e=Q&download=1"),
    ("https://contoso.sharepoint.com/:w:/g/EQab12", "https://contoso.sharepoint.com/:w:/g/EQab12?download=1")])
def test_a_sharing_link_gains_download_1_and_keeps_what_identifies_it(url, direct):
    assert sharepoint_direct_url(url) == direct
