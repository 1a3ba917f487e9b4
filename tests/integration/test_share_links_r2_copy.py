"""Share links of OneDrive, SharePoint and Box resolved and copied to R2 through the real Worker on Miniflare
(issue 19): the resolver follows the link on a fake share host (its configured base), gives the provider's direct
form on the provider's public origin, and the Worker fetches that form — its outbound requests answered by the same
fake, every redirect hop checked against the generated allow-list — so the r2_url serves the file's exact bytes.
The fake answers its hops with relative redirects, which both the resolver and the Worker resolve on their own
origin. What a fake cannot show (the providers' real redirect chains as they change, cookies, IP-bound URLs) is in
the README's limits."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import requests

from config import ProviderConfig, ProviderEndpoint, R2Config
from email_processing.links import DeliveryLink
from email_processing.resolution import ResolutionStatus
from harness.file_hosts.share_host import Download, FakeShareHost, Redirect
from services.link_resolution import LinkResolution, ResolvingOffloader
from services.r2_offload import R2Offloader

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@dataclass(frozen=True)
class Case:
    provider: str
    link: str
    public_origin: str        # the origin of the direct form the resolver gives (the fake stands for it)
    hops: tuple[tuple[str, str], ...]   # (path, where it redirects: absolute to the fake when it starts with "{}")
    file_path: str
    name: str
    size: int


CASES = (
    Case("onedrive", "https://1drv.ms/u/s!AkLmNoPqRsTuVwXyZ0123", "https://onedrive.live.com",
         (("/u/s!AkLmNoPqRsTuVwXyZ0123", "{}/redir?resid=4F2A9C1B7D3E!1234&authkey=!AbCdEfGh"),
          ("/download", "/y4mFiLeS/Plan.pdf?download&psid=1")),
         "/y4mFiLeS/Plan.pdf", "Plan.pdf", 140_000),
    Case("sharepoint", "https://contoso-my.sharepoint.com/:b:/g/personal/ana_contoso_com/EZx9kLmNoPqRsTuVw?e=Ab12Cd",
         "https://contoso-my.sharepoint.com",
         (("/:b:/g/personal/ana_contoso_com/EZx9kLmNoPqRsTuVw",
           "/personal/ana_contoso_com/_layouts/15/download.aspx?UniqueId=7c1f&tempauth=TeMpAuTh"),),
         "/personal/ana_contoso_com/_layouts/15/download.aspx", "Site survey.pdf", 90_000),
    Case("box", "https://app.box.com/s/kwio6b4ovt1264rnfbyqo1", "https://app.box.com",
         (("/shared/static/kwio6b4ovt1264rnfbyqo1", "/d/1/b1!DlToKeN/download"),),
         "/d/1/b1!DlToKeN/download", "Contract signed.pdf", 60_000),
)


@pytest.fixture
def share_host():
    fake = FakeShareHost().start()
    yield fake
    fake.stop()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.provider)
def test_a_share_link_is_resolved_and_its_file_copied_to_r2_through_the_worker(case, share_host, worker_on_miniflare):
    # Given the provider's redirect chain on a fake share host, which also answers the Worker's outbound requests
    for path, location in case.hops:
        share_host.route(path, Redirect(location.format(share_host.url)))
    share_host.route(case.file_path, Download(case.name, case.size))
    worker = worker_on_miniflare(share_host.url)
    endpoint = ProviderEndpoint(share_host.url, allow_insecure=True, public_url=case.public_origin)
    resolution = LinkResolution([ProviderConfig(case.provider, endpoint=endpoint, timeout_seconds=5)])
    r2 = R2Config(fetch_enabled=True, fetch_endpoint=worker.url, allow_insecure=True, fetch_token=worker.token,
                  public_base_url=worker.public_base_url, fetch_timeout_seconds=20.0)
    offloader = ResolvingOffloader(resolution, R2Offloader(r2, copy_store=None), budget_seconds=30)
    try:
        # When the link is enriched (resolved, then copied)
        [enriched] = offloader.offload_links("email-1", [DeliveryLink(case.provider, case.link, case.link)])
    finally:
        offloader.close()
    # Then it is resolved to the file, its direct form is on the provider's own origin, and R2 serves the bytes
    assert enriched.resolution.status is ResolutionStatus.OK
    assert [(f.name, f.size_bytes) for f in enriched.resolution.files] == [(case.name, case.size)]
    assert enriched.raw_url == case.link
    # (the fake's origin never reaches a webhook: the direct URL is the link's own form or the provider's origin)
    assert enriched.direct_url.startswith((case.link, case.public_origin + "/"))
    assert enriched.r2_url and enriched.file_r2_urls == (enriched.r2_url,), enriched
    copy = requests.get(enriched.r2_url, timeout=10)
    assert copy.status_code == 200 and copy.content == b"\0" * case.size
    # the Worker fetched the direct form and followed the provider's hop to the file (GETs; the resolver HEADs)
    assert [r.path for r in share_host.requests if r.method == "GET"][-1] == case.file_path
