"""Pure rules of the Dropbox resolver: which /l/ notification links are followed, and what a share-link target
becomes (no socket)."""

import pytest

from email_processing.resolution import ResolutionStatus
from services.resolvers.dropbox import is_followed_tracking_link, is_share_link, share_resolution


@pytest.mark.parametrize("url, followed", [
    ("https://www.dropbox.com/l/scl/AAAud2xbRKh-ZiPBhcMsAVSTzJpVSaC_qwQ", True),
    ("https://www.dropbox.com/l/scl/AAAud2xbRKh-ZiPBhcMsAVSTzJpVSaC_qwQ/", True),
    ("https://www.dropbox.com/l/AABWjooGQaWoHtoVAS-WNXojMuESi-3AWkk", False),           # any link: a pixel too
    ("https://www.dropbox.com/l/AAD-jqnfHjlJUO9hMoWdydqe3u594O5FMiE/forgot_finish", False),
    ("https://www.dropbox.com/l/AAAhW7m5KgieXUt96YPVxQAikIuP2k0jBzQ/deleted_files", False),
    ("https://www.dropbox.com/l/scl/short", False),
    ("https://www.dropbox.com/l/scl/AAAud2xbRKh-ZiPBhcMsAVSTzJpVSaC_qwQ/unsubscribe", False)])
def test_only_share_notification_links_are_followed(url, followed):
    assert is_followed_tracking_link(url) is followed


@pytest.mark.parametrize("url, share", [("https://www.dropbox.com/scl/fi/abc/a.pdf?rlkey=k&dl=0", True),
                                        ("https://www.dropbox.com/s/abc/a.pdf?dl=0", True),
                                        ("https://www.dropbox.com/scl/fo/abc/h?rlkey=k", True),
                                        ("https://www.dropbox.com/account/unsubscribe", False),
                                        ("https://www.dropbox.com/login?cont=/scl/fi/abc", False)])
def test_share_link_targets_are_told_from_other_pages(url, share):
    assert is_share_link(url) is share


def test_a_file_share_becomes_its_dl_1_form_named_by_its_path():
    resolution = share_resolution("https://www.dropbox.com/scl/fi/h7c/Site%20plan.pdf?dl=0&st=s&rlkey=r")

    assert resolution.status is ResolutionStatus.OK
    assert resolution.direct_url == "https://www.dropbox.com/scl/fi/h7c/Site%20plan.pdf?rlkey=r&st=s&dl=1"
    assert [f.name for f in resolution.files] == ["Site plan.pdf"] and resolution.file_count == 1


def test_a_folder_share_becomes_its_zip_form_without_a_file_list():
    resolution = share_resolution("https://www.dropbox.com/scl/fo/f0/h?rlkey=r&dl=0")

    assert resolution.direct_url == "https://www.dropbox.com/scl/fo/f0/h?rlkey=r&dl=1" and resolution.files == ()
