"""The resolution stage's rules (issue 19), with scripted resolvers (the real ones are proven against local fakes of
the providers in tests/integration/test_resolver_*.py): one link that breaks never stops the others, a provider's
budget, circuit and 429 hold, the cache, and a resolved direct URL only on the provider's own hosts."""

from __future__ import annotations

import logging

import pytest

from config import ProviderConfig
from email_processing.links import DeliveryLink
from email_processing.payload import _link_entry
from email_processing.resolution import Resolution, ResolutionStatus, ResolvedFile
from services.link_resolution import CACHE_PREFIX, LinkResolution, ResolvingOffloader
from services.resolvers.base import ResolverError

SWISS = DeliveryLink("swisstransfer", "https://www.swisstransfer.com/d/1111", "https://www.swisstransfer.com/d/1111")
SWISS_2 = DeliveryLink("swisstransfer", "https://www.swisstransfer.com/d/2222", "https://www.swisstransfer.com/d/2222")
DROPBOX = DeliveryLink("dropbox", "https://www.dropbox.com/l/scl/AAA", "https://www.dropbox.com/l/scl/AAA")
MEGA = DeliveryLink("mega", "https://mega.nz/file/x#k", "https://mega.nz/file/x#k")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """A resolver answering from a script per raw URL: a Resolution, an exception to raise, or a callable."""

    def __init__(self, provider: str, script: dict) -> None:
        self.provider = provider
        self.script = script
        self.calls: list[str] = []

    def handles(self, link: DeliveryLink) -> bool:
        return link.raw_url in self.script

    def resolve(self, link, http, config) -> Resolution:
        self.calls.append(link.raw_url)
        answer = self.script[link.raw_url]
        if callable(answer):
            answer = answer()
        if isinstance(answer, BaseException):
            raise answer
        return answer


class MemoryCache:
    def __init__(self) -> None:
        self.records: dict[str, tuple[dict, float]] = {}

    def get_r2_copy(self, key: str):
        record = self.records.get(key)
        return None if record is None else record[0]

    def put_r2_copy(self, key: str, record: dict, ttl_seconds: float) -> None:
        self.records[key] = (record, ttl_seconds)


class CopyingNothing:
    def offloads_any(self, links) -> bool:
        return False

    def offload_links(self, email_id, links):
        from email_processing.orchestrator import source_only

        return [source_only(link) for link in links]


def stage(*resolvers: Scripted, cache=None, clock=None, **config) -> LinkResolution:
    by_name = {resolver.provider: resolver for resolver in resolvers}
    providers = [ProviderConfig(name, **config) for name in ("swisstransfer", "dropbox", "mega")]
    return LinkResolution(providers, cache, clock=clock or Clock(), wall_clock=lambda: 1_000_000.0,
                          resolvers=by_name.get)


OK = Resolution(ResolutionStatus.OK, (ResolvedFile("a.mov", 10, "https://dl-1.swisstransfer.com/x"),),
                expires_at=1_000_000.0 + 86400)


def test_a_link_whose_resolver_raises_gets_error_and_the_links_after_it_are_resolved(caplog):
    resolver = Scripted("swisstransfer", {SWISS.raw_url: RuntimeError("bug"), SWISS_2.raw_url: OK})
    results = stage(resolver).resolve_links("e1", [SWISS, SWISS_2, MEGA], deadline=1e9)
    assert [r.status for r in results] == [ResolutionStatus.ERROR, ResolutionStatus.OK, ResolutionStatus.NONE]
    assert all("swisstransfer.com/d/" not in record.getMessage() for record in caplog.records)


def test_a_provider_that_asks_to_slow_down_is_held_and_its_other_links_are_rate_limited_without_a_call():
    clock = Clock()
    resolver = Scripted("swisstransfer", {SWISS.raw_url: ResolverError("rate_limited", retry_after=30),
                                          SWISS_2.raw_url: OK})
    resolution = stage(resolver, clock=clock)
    results = resolution.resolve_links("e1", [SWISS, SWISS_2], deadline=1e9)
    assert [r.status for r in results] == [ResolutionStatus.RATE_LIMITED] * 2
    assert results[0].retry_after == 30 and resolver.calls == [SWISS.raw_url]
    clock.now += 31
    assert resolution.resolve_links("e2", [SWISS_2], deadline=1e9)[0].status is ResolutionStatus.OK


def test_a_failing_provider_opens_its_circuit_and_its_links_go_out_unresolved_without_calls():
    links = [DeliveryLink("swisstransfer", f"https://www.swisstransfer.com/d/{n}", "x") for n in range(6)]
    resolver = Scripted("swisstransfer", {link.raw_url: ResolverError("http_503") for link in links})
    results = stage(resolver, circuit_failures=3).resolve_links("e1", links, deadline=1e9)
    assert {r.status for r in results} == {ResolutionStatus.ERROR}
    assert len(resolver.calls) == 3


def test_a_provider_that_spends_its_budget_leaves_the_rest_of_its_links_unresolved_but_not_other_providers():
    clock = Clock()

    def slow() -> Resolution:
        clock.now += 20
        return OK

    swiss = Scripted("swisstransfer", {SWISS.raw_url: slow, SWISS_2.raw_url: OK})
    dropbox = Scripted("dropbox", {DROPBOX.raw_url: Resolution(ResolutionStatus.UNSUPPORTED)})
    results = stage(swiss, dropbox, clock=clock, budget_seconds=15).resolve_links("e1", [SWISS, SWISS_2, DROPBOX],
                                                                                  deadline=1e9)
    assert [r.status for r in results] == [ResolutionStatus.OK, ResolutionStatus.ERROR, ResolutionStatus.UNSUPPORTED]
    assert swiss.calls == [SWISS.raw_url]


def test_a_resolution_is_cached_for_at_most_the_links_lifetime_and_transient_outcomes_never():
    cache = MemoryCache()
    soon = Resolution(ResolutionStatus.OK, expires_at=1_000_000.0 + 120)
    resolver = Scripted("swisstransfer", {SWISS.raw_url: soon, SWISS_2.raw_url: ResolverError("timeout")})
    resolution = stage(resolver, cache=cache)
    resolution.resolve_links("e1", [SWISS, SWISS_2], deadline=1e9)
    assert set(cache.records) == {CACHE_PREFIX + SWISS.raw_url}
    assert cache.records[CACHE_PREFIX + SWISS.raw_url][1] == pytest.approx(120)
    resolution.resolve_links("e2", [SWISS], deadline=1e9)
    assert resolver.calls == [SWISS.raw_url, SWISS_2.raw_url]  # the second time from the cache


def test_the_files_are_capped_and_the_count_kept():
    many = Resolution(ResolutionStatus.OK, tuple(ResolvedFile(f"f{n}", 1) for n in range(7)))
    [result] = stage(Scripted("swisstransfer", {SWISS.raw_url: many}), max_files=3).resolve_links(
        "e1", [SWISS], deadline=1e9)
    assert len(result.files) == 3 and result.file_count == 7


@pytest.mark.parametrize("direct, emitted", [
    ("https://www.dropbox.com/scl/fi/abc/x.mov?rlkey=k&dl=1", "https://www.dropbox.com/scl/fi/abc/x.mov?rlkey=k&dl=1"),
    ("https://www.dropbox.com.evil.test/x", DROPBOX.direct_url),     # a look-alike: the extractor's form stays
    ("http://www.dropbox.com/scl/fi/abc/x.mov", DROPBOX.direct_url),
])
def test_a_resolved_direct_url_is_emitted_only_on_the_providers_own_hosts(direct, emitted, caplog):
    caplog.set_level(logging.INFO)
    resolved = Resolution(ResolutionStatus.OK, direct_url=direct)
    offloader = ResolvingOffloader(stage(Scripted("dropbox", {DROPBOX.raw_url: resolved})), CopyingNothing(),
                                   budget_seconds=30)
    assert offloader.offloads_any([DROPBOX]) and not offloader.offloads_any([MEGA])
    [link] = offloader.offload_links("e1", [DROPBOX])
    assert link.direct_url == emitted and link.raw_url == DROPBOX.raw_url


def test_an_enriched_link_carries_its_resolution_fields_into_the_payload():
    offloader = ResolvingOffloader(stage(Scripted("swisstransfer", {SWISS.raw_url: OK})), CopyingNothing(),
                                   budget_seconds=30)
    [link] = offloader.offload_links("e1", [SWISS])
    entry = _link_entry(link)
    assert entry["resolution"] == "ok" and entry["expires_at"] == "1970-01-13T13:46:40Z"
    assert entry["files"] == [{"name": "a.mov", "size_bytes": 10, "r2_url": None}]
    assert entry["size_bytes"] == 10 and entry["file_count"] == 1
    assert "dl-1.swisstransfer.com" not in str(entry)  # a download URL is a capability, never in the payload


class CopyingAll:
    """Copies whatever it is given: r2_url names the URL it fetched."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def offloads_any(self, links) -> bool:
        return True

    def offload_links(self, email_id, links):
        from email_processing.orchestrator import OffloadedLink

        self.asked.extend(link.direct_url for link in links)
        return [OffloadedLink(link.provider, link.raw_url, link.direct_url,
                              f"https://r2.example/{len(self.asked)}-{n}", f"name-{n}")
                for n, link in enumerate(links)]


def three_files(sizes=(10, 20, 30)) -> Resolution:
    return Resolution(ResolutionStatus.OK, tuple(ResolvedFile(f"f{n}.mov", size, f"https://dl-1.swisstransfer.com/api/download/1111/{n}")
                                                 for n, size in enumerate(sizes)))


def test_a_resolved_transfer_is_copied_file_by_file_each_with_its_own_r2_url():
    copier = CopyingAll()
    offloader = ResolvingOffloader(stage(Scripted("swisstransfer", {SWISS.raw_url: three_files()})), copier,
                                   budget_seconds=30)
    [link] = offloader.offload_links("e1", [SWISS])
    assert copier.asked == [f"https://dl-1.swisstransfer.com/api/download/1111/{n}" for n in range(3)]
    entry = _link_entry(link)
    assert [item["r2_url"] for item in entry["files"]] == [f"https://r2.example/3-{n}" for n in range(3)]
    assert entry["r2_url"] is None and entry["raw_url"] == SWISS.raw_url  # several files: each has its own


def test_files_past_the_emails_byte_budget_keep_their_source_and_a_single_file_gives_the_link_its_copy():
    copier = CopyingAll()
    resolutions = {SWISS.raw_url: three_files((10, 100, 5)), SWISS_2.raw_url: three_files((7,))}
    offloader = ResolvingOffloader(stage(Scripted("swisstransfer", resolutions)), copier, budget_seconds=30,
                                   max_email_bytes=20)
    first, second = offloader.offload_links("e1", [SWISS, SWISS_2])
    assert [url is not None for url in first.file_r2_urls] == [True, False, True]
    assert second.file_r2_urls == (None,)   # 10 + 5 spent, 7 more would pass 20
    single = ResolvingOffloader(stage(Scripted("swisstransfer", {SWISS_2.raw_url: three_files((7,))})),
                                CopyingAll(), budget_seconds=30)
    [link] = single.offload_links("e2", [SWISS_2])
    assert link.r2_url == link.file_r2_urls[0] is not None and link.original_filename == "name-0"


def test_a_provider_that_is_never_copied_is_resolved_but_its_files_are_not_copied():
    copier = CopyingAll()
    mega_files = Resolution(ResolutionStatus.OK, (ResolvedFile("x", 1, "https://mega.nz/dl/x"),))
    offloader = ResolvingOffloader(stage(Scripted("mega", {MEGA.raw_url: mega_files})), copier, budget_seconds=30)
    [link] = offloader.offload_links("e1", [MEGA])
    assert copier.asked == [MEGA.direct_url] and link.resolution.status is ResolutionStatus.OK


def test_a_url_a_resolver_got_on_a_local_base_is_copied_and_emitted_on_the_providers_public_origin():
    from config import ProviderEndpoint

    endpoint = ProviderEndpoint("http://127.0.0.1:8123", allow_insecure=True,
                                public_url="https://drive.usercontent.google.com")
    drive = DeliveryLink("gdrive", "https://drive.google.com/file/d/F1/view",
                         "https://drive.google.com/uc?id=F1&export=download")
    resolved = Resolution(ResolutionStatus.OK, (ResolvedFile("cut.mov", 5, "http://127.0.0.1:8123/download?id=F1"),),
                          direct_url="http://127.0.0.1:8123/download?id=F1")
    resolution = LinkResolution([ProviderConfig("gdrive", endpoint=endpoint)], clock=Clock(),
                                resolvers={"gdrive": Scripted("gdrive", {drive.raw_url: resolved})}.get)
    copier = CopyingAll()
    [link] = ResolvingOffloader(resolution, copier, budget_seconds=30).offload_links("e1", [drive])
    assert copier.asked == ["https://drive.usercontent.google.com/download?id=F1"]
    assert link.r2_url is not None and "127.0.0.1" not in str(_link_entry(link))
