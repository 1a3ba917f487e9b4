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
