"""The Google Drive resolver against a fake of Drive's download host over real HTTPS (a trustme CA): shared files,
the large-file confirmation step, every status it maps, transport failures, look-alike hosts, and no URL in logs."""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from config import ProviderConfig, ProviderEndpoint
from email_processing.links import DeliveryLink
from email_processing.providers.gdrive import gdrive_direct_url
from email_processing.resolution import ResolutionStatus
from harness.file_hosts.gdrive import DriveFile, FakeGoogleDrive
from services.resolvers import RESOLVERS, provider_http
from services.resolvers.base import ResolverError
from services.resolvers.gdrive import RESOLVER

FILE_ID = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"


@pytest.fixture
def drive():
    fake = FakeGoogleDrive(tls=True).start()
    yield fake
    fake.stop()


def _config(drive: FakeGoogleDrive) -> ProviderConfig:
    return ProviderConfig("gdrive", endpoint=ProviderEndpoint(drive.url, ca_file=drive.ca_file), timeout_seconds=5)


def _resolve(drive: FakeGoogleDrive, url: str):
    config = _config(drive)
    link = DeliveryLink("gdrive", url, gdrive_direct_url(url))
    return RESOLVER.resolve(link, provider_http(config, time.monotonic() + 10), config)


def _view(file_id: str = FILE_ID, query: str = "usp=sharing") -> str:
    return f"https://drive.google.com/file/d/{file_id}/view?{query}"


def test_the_gdrive_resolver_is_registered():
    assert RESOLVERS["gdrive"] is RESOLVER


def test_a_shared_file_resolves_to_its_download_with_name_and_size_from_headers_only(drive):
    drive.add(FILE_ID, DriveFile("Quarterly report.pdf", 48213))

    resolution = _resolve(drive, _view())

    assert resolution.status is ResolutionStatus.OK
    assert [(f.name, f.size_bytes) for f in resolution.files] == [("Quarterly report.pdf", 48213)]
    assert resolution.file_count == 1 and resolution.size_bytes == 48213 and resolution.expires_at is None
    direct = urlsplit(resolution.direct_url or "")
    assert f"{direct.scheme}://{direct.netloc}{direct.path}" == f"{drive.url}/download"
    assert parse_qs(direct.query) == {"id": [FILE_ID], "export": ["download"]}
    assert resolution.files[0].download_url == resolution.direct_url
    # headers only: no GET of the file
    assert [(r.method, r.path) for r in drive.requests] == [("HEAD", "/download")]


def test_a_large_file_is_confirmed_through_the_virus_scan_page(drive):
    drive.add(FILE_ID, DriveFile("raw footage.mov", 5 * 1024 ** 3 + 17, large=True))

    resolution = _resolve(drive, _view())

    assert resolution.status is ResolutionStatus.OK
    assert [(f.name, f.size_bytes) for f in resolution.files] == [("raw footage.mov", 5 * 1024 ** 3 + 17)]
    query = parse_qs(urlsplit(resolution.direct_url or "").query)
    assert query["confirm"] == ["t"] and query["id"] == [FILE_ID] and query["export"] == ["download"]
    assert query["uuid"][0] in drive.issued_uuids
    # the page is read once; the confirmed download is asked with a HEAD, never downloaded
    assert [r.method for r in drive.requests] == ["HEAD", "GET", "HEAD"]
    assert drive.requests[-1].query.get("confirm") == "t"


def test_a_confirmed_download_without_headers_takes_its_name_from_the_warning_page(drive):
    drive.add(FILE_ID, DriveFile("raw footage.mov", 5 * 1024 ** 3, large=True, bare_confirmed=True))

    resolution = _resolve(drive, _view())

    assert resolution.status is ResolutionStatus.OK
    # the page shows a rounded size only: none is taken from it
    assert [(f.name, f.size_bytes) for f in resolution.files] == [("raw footage.mov", None)]
    assert parse_qs(urlsplit(resolution.direct_url or "").query)["confirm"] == ["t"]


def test_the_resourcekey_of_an_older_shared_file_is_kept(drive):
    drive.add(FILE_ID, DriveFile("old.zip", 10, resource_key="0-AbCdEf"))

    resolution = _resolve(drive, _view(query="resourcekey=0-AbCdEf"))

    assert resolution.status is ResolutionStatus.OK
    assert parse_qs(urlsplit(resolution.direct_url or "").query)["resourcekey"] == ["0-AbCdEf"]


@pytest.mark.parametrize("url", [f"https://drive.google.com/open?id={FILE_ID}",
                                 f"https://drive.google.com/uc?id={FILE_ID}&export=download",
                                 f"https://docs.google.com/uc?id={FILE_ID}&export=download",
                                 f"https://drive.usercontent.google.com/download?id={FILE_ID}&export=download"])
def test_every_file_link_shape_reaches_the_same_download(drive, url):
    drive.add(FILE_ID, DriveFile("a.bin", 3))

    assert _resolve(drive, url).status is ResolutionStatus.OK


def test_an_unknown_file_is_not_found(drive):
    assert _resolve(drive, _view()).status is ResolutionStatus.NOT_FOUND


def test_a_file_not_shared_with_anyone_with_the_link_is_an_error_and_the_sign_in_page_is_not_fetched(drive):
    drive.add(FILE_ID, DriveFile("private.pdf", 5, shared=False))

    resolution = _resolve(drive, _view())

    assert resolution.status is ResolutionStatus.ERROR and resolution.files == ()
    assert len(drive.requests) == 1   # the sign-in redirect is not followed (accounts.google.com is not asked)


def test_a_file_over_its_download_quota_is_limit_reached(drive):
    drive.add(FILE_ID, DriveFile("popular.zip", 5, quota_exceeded=True))

    assert _resolve(drive, _view()).status is ResolutionStatus.LIMIT_REACHED


@pytest.mark.parametrize("url", ["https://drive.google.com/drive/folders/1FoLdErIdAbCdEfGhIj?usp=sharing",
                                 f"https://docs.google.com/document/d/{FILE_ID}/edit",
                                 f"https://docs.google.com/spreadsheets/d/{FILE_ID}/edit#gid=0",
                                 f"https://docs.google.com/presentation/d/{FILE_ID}/edit"])
def test_folders_and_editor_documents_are_unsupported_without_a_request(drive, url):
    assert _resolve(drive, url).status is ResolutionStatus.UNSUPPORTED
    assert drive.requests == []


def test_a_429_is_rate_limited_with_its_retry_after(drive):
    drive.add(FILE_ID, DriveFile("a.bin", 3))
    drive.fail_next(1, 429, retry_after=42)

    with pytest.raises(ResolverError) as caught:
        _resolve(drive, _view())

    assert caught.value.reason == "rate_limited" and caught.value.retry_after == 42


def test_a_5xx_is_a_resolver_error(drive):
    drive.add(FILE_ID, DriveFile("a.bin", 3, large=True))
    drive.fail_next(1, 503)

    with pytest.raises(ResolverError) as caught:
        _resolve(drive, _view())

    assert caught.value.reason == "http_503"



@pytest.mark.parametrize("target", ["https://drive.usercontent.google.com.evil.example/download?id=x",
                                    "https://evil.example/drive.usercontent.google.com/download",
                                    "http://drive.usercontent.google.com/download?id=x"])
def test_a_redirect_to_a_look_alike_host_is_refused(drive, target):
    drive.add(FILE_ID, DriveFile("a.bin", 3, redirect_to=target))

    with pytest.raises(ResolverError) as caught:
        _resolve(drive, _view())

    assert caught.value.reason == "refused_host"
    assert len(drive.requests) == 1


def test_a_confirmation_form_posting_to_a_look_alike_host_is_refused(drive):
    drive.add(FILE_ID, DriveFile("a.bin", 3, large=True,
                                 form_action="https://drive.usercontent.google.com.evil.example/download"))

    with pytest.raises(ResolverError) as caught:
        _resolve(drive, _view())

    assert caught.value.reason == "refused_host"
    assert [r.method for r in drive.requests] == ["HEAD", "GET"]


def test_no_file_id_or_download_url_reaches_a_log_line(drive, caplog):
    caplog.set_level(logging.DEBUG)
    drive.add(FILE_ID, DriveFile("a.bin", 3, large=True))
    drive.add("1PrIvAtEfIlEiDxXxXxXxXx", DriveFile("b.bin", 3, shared=False))
    drive.add("1EvIlReDiReCtXxXxXxXxXx", DriveFile("c.bin", 3, redirect_to="https://evil.example/?id=1SeCrEt"))

    ok = _resolve(drive, _view())
    _resolve(drive, _view("1PrIvAtEfIlEiDxXxXxXxXx"))
    with pytest.raises(ResolverError):
        _resolve(drive, _view("1EvIlReDiReCtXxXxXxXxXx"))

    # urllib3 logs request lines at DEBUG: log_setup holds it at WARNING, so only the service's own loggers count
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("urllib3"))
    assert "gdrive" in text  # the lines under test were captured
    uuid = parse_qs(urlsplit(ok.direct_url or "").query)["uuid"][0]
    for secret in (FILE_ID, "1PrIvAtEfIlEiDxXxXxXxXx", "1EvIlReDiReCtXxXxXxXxXx", "1SeCrEt", uuid, "/download"):
        assert secret not in text
