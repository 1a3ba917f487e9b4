"""The resolution stage (issue 19): each link of an email whose provider has a resolver is turned into what it holds
(``email_processing.resolution.Resolution``) before its R2 copy, in the background enrichment of that email.

Rules, per link and per provider:
- isolation: a resolver that raises, times out or answers nonsense gives that link ``error``; the others go on;
- a time budget per provider per email (RESOLVE_BUDGET_SECONDS, never past the email's own deadline), each call
  bounded by RESOLVE_TIMEOUT_SECONDS;
- a circuit breaker per provider (RESOLVE_CIRCUIT_*): an open circuit gives ``error`` without a call;
- a 429 holds the provider for its ``Retry-After`` (at least a few seconds): its links are ``rate_limited`` meanwhile;
- results are cached in the state store under the canonical link (the R2 copy cache's table, its own key space) for
  at most the link's lifetime, never a transient status;
- the landing URL always stays: a resolution only adds fields (and a better ``direct_url`` for the copy).

``ResolvingOffloader`` puts this stage in front of the R2 offloader: the enrichment stage and ingestion keep the one
``Offloader`` interface (``offloads_any``, ``offload_links``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

from config import ProviderConfig
from email_processing.links import DeliveryLink, LinkLike
from email_processing.orchestrator import OffloadedLink
from email_processing.resolution import (
    CACHE_SECONDS,
    UNRESOLVED,
    Resolution,
    ResolutionStatus,
    ResolvedFile,
)
from email_processing.urls import RefusedUrl, check_url, host_of
from services.circuit_breaker import BreakerState, BreakerTransition, CircuitBreaker
from services.resolvers import provider_hosts, provider_http, resolver_for
from services.resolvers.base import Resolver, ResolverError

logger = logging.getLogger(__name__)

MIN_RATE_LIMIT_HOLD_SECONDS = 5.0
MAX_RATE_LIMIT_HOLD_SECONDS = 3600.0
CACHE_OK_MAX_SECONDS = 600.0        # an ok resolution holds short-lived download URLs: asked again after this
CACHE_PREFIX = "resolution\0"       # the key space of resolutions in the shared link cache


class ResolutionCache(Protocol):
    """Where resolutions are kept (the state store's link cache)."""

    def get_r2_copy(self, source_url: str) -> dict | None: ...

    def put_r2_copy(self, source_url: str, record: dict, ttl_seconds: float) -> None: ...


@dataclass(frozen=True)
class EnrichedLink(OffloadedLink):
    """A link as the webhook carries it once enriched: its R2 copy (if any), its resolution, and the R2 copy of each
    file the resolution listed (``file_r2_urls``, in the files' order)."""

    resolution: Resolution = UNRESOLVED
    file_r2_urls: tuple[str | None, ...] = ()


def resolution_record(resolution: Resolution) -> dict[str, Any]:
    return {"status": resolution.status.value, "expires_at": resolution.expires_at,
            "size_bytes": resolution.size_bytes, "file_count": resolution.file_count,
            "direct_url": resolution.direct_url,
            "files": [{"name": item.name, "size_bytes": item.size_bytes, "download_url": item.download_url}
                      for item in resolution.files]}


def resolution_from_record(record: dict[str, Any]) -> Resolution | None:
    try:
        files = tuple(ResolvedFile(str(item["name"]), item.get("size_bytes"), item.get("download_url"))
                      for item in record.get("files") or [])
        return Resolution(ResolutionStatus(record["status"]), files, record.get("expires_at"),
                          record.get("size_bytes"), record.get("file_count"), record.get("direct_url"))
    except (KeyError, TypeError, ValueError):
        return None


class LinkResolution:
    """Resolves the links of emails, one provider budget, breaker and rate-limit hold per provider."""

    def __init__(self, providers: Iterable[ProviderConfig], cache: ResolutionCache | None = None,
                 metrics: Any = None, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, session_factory: Callable[[], Any] | None = None,
                 resolvers: Callable[[str], Resolver | None] = resolver_for) -> None:
        self.providers = {config.id: config for config in providers}
        self.cache = cache
        self.metrics = metrics
        self.clock = clock
        self.wall_clock = wall_clock
        self.session_factory = session_factory
        self._resolvers = resolvers
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._held_until: dict[str, float] = {}

    # --- what is resolved ---------------------------------------------------------------------------------------

    def resolver(self, link: LinkLike) -> tuple[Resolver, ProviderConfig] | None:
        config = self.providers.get(link.provider)
        if config is None or not config.resolve:
            return None
        resolver = self._resolvers(link.provider)
        if resolver is None:
            return None
        try:
            handles = resolver.handles(_as_delivery_link(link))
        except Exception:
            logger.debug("RESOLVE: handles() raised provider=%s", link.provider, exc_info=True)
            return None
        return (resolver, config) if handles else None

    def wants(self, links: Sequence[LinkLike]) -> bool:
        """Whether any of ``links`` has a resolver that takes it (the email is then worth enriching)."""
        return any(self.resolver(link) is not None for link in links)

    # --- resolving ---------------------------------------------------------------------------------------------

    def resolve_links(self, email_id: str, links: Sequence[LinkLike], deadline: float) -> list[Resolution]:
        """One resolution per link, same order; never raises. ``deadline``: monotonic, the email's budget."""
        provider_deadlines: dict[str, float] = {}
        results: list[Resolution] = []
        for link in links:
            try:
                results.append(self._resolve_one(email_id, link, deadline, provider_deadlines))
            except Exception:  # isolation: one link that breaks gives error, the others go on
                logger.error("RESOLVE: unexpected error provider=%s email_id=%s", link.provider, email_id,
                             exc_info=True)
                results.append(Resolution(ResolutionStatus.ERROR))
        return results

    def _resolve_one(self, email_id: str, link: LinkLike, deadline: float,
                     provider_deadlines: dict[str, float]) -> Resolution:
        chosen = self.resolver(link)
        if chosen is None:
            return UNRESOLVED
        resolver, config = chosen
        cached = self._cached(link)
        if cached is not None:
            self._count("resolutions", "cached")
            return cached
        if self._held(config.id):
            return self._outcome(email_id, link, Resolution(ResolutionStatus.RATE_LIMITED), "held")
        breaker = self._breaker(config)
        if not breaker.allow():
            return self._outcome(email_id, link, Resolution(ResolutionStatus.ERROR), "circuit_open")
        until = provider_deadlines.setdefault(config.id, min(deadline, self.clock() + config.budget_seconds))
        if until <= self.clock():
            return self._outcome(email_id, link, Resolution(ResolutionStatus.ERROR), "budget_spent")
        try:
            resolution = self._ask(resolver, config, link, until)
        except ResolverError as exc:
            if exc.reason == "rate_limited":
                self._hold(config.id, exc.retry_after)
                breaker.record_success()  # it answered: slow down, do not count it as down
                return self._outcome(email_id, link, Resolution(ResolutionStatus.RATE_LIMITED,
                                                                retry_after=exc.retry_after), exc.reason)
            if exc.reason != "refused_host":
                breaker.record_failure()
            return self._outcome(email_id, link, Resolution(ResolutionStatus.ERROR), exc.reason)
        breaker.record_success()
        resolution = resolution.capped(config.max_files)
        self._remember(link, resolution)
        return self._outcome(email_id, link, resolution, resolution.status.value)

    def _ask(self, resolver: Resolver, config: ProviderConfig, link: LinkLike, until: float) -> Resolution:
        session = self.session_factory() if self.session_factory is not None else None
        http = provider_http(config, until, session)
        try:
            resolution = resolver.resolve(_as_delivery_link(link), http, config)
        finally:
            http.session.close()
        if not isinstance(resolution, Resolution):
            raise ResolverError("invalid_answer", "the resolver returned no Resolution")
        return resolution

    def _outcome(self, email_id: str, link: LinkLike, resolution: Resolution, reason: str) -> Resolution:
        log = logger.info if resolution.status is ResolutionStatus.OK else logger.warning
        if resolution.status in (ResolutionStatus.EXPIRED, ResolutionStatus.NOT_FOUND,
                                 ResolutionStatus.PASSWORD_REQUIRED, ResolutionStatus.LIMIT_REACHED,
                                 ResolutionStatus.UNSUPPORTED):
            log = logger.info  # the link's own state, not a fault of the service
        log("RESOLVE: provider=%s host=%s email_id=%s resolution=%s reason=%s files=%s", link.provider,
            host_of(link.raw_url), email_id, resolution.status.value, reason,
            resolution.file_count if resolution.file_count is not None else len(resolution.files))
        self._count("resolutions", resolution.status.value)
        return resolution

    # --- the provider's state ----------------------------------------------------------------------------------

    def _breaker(self, config: ProviderConfig) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(config.id)
            if breaker is None:
                breaker = CircuitBreaker(config.circuit_failures, config.circuit_cooldown_seconds, self.clock,
                                         on_transition=_transition_logger(config.id))
                self._breakers[config.id] = breaker
            return breaker

    def _hold(self, provider: str, retry_after: float | None) -> None:
        seconds = min(MAX_RATE_LIMIT_HOLD_SECONDS, max(MIN_RATE_LIMIT_HOLD_SECONDS, retry_after or 0.0))
        with self._lock:
            self._held_until[provider] = max(self._held_until.get(provider, 0.0), self.clock() + seconds)
        logger.warning("RESOLVE: provider=%s asked to slow down; its links go out unresolved for %.0f s", provider,
                       seconds)

    def _held(self, provider: str) -> bool:
        with self._lock:
            return self.clock() < self._held_until.get(provider, 0.0)

    # --- the cache ---------------------------------------------------------------------------------------------

    def _cached(self, link: LinkLike) -> Resolution | None:
        if self.cache is None:
            return None
        try:
            record = self.cache.get_r2_copy(CACHE_PREFIX + link.raw_url)
        except Exception:  # the cache is an optimisation
            logger.debug("RESOLVE: cache read failed", exc_info=True)
            return None
        return resolution_from_record(record) if isinstance(record, dict) else None

    def _remember(self, link: LinkLike, resolution: Resolution) -> None:
        ttl = CACHE_SECONDS.get(resolution.status)
        if self.cache is None or ttl is None:
            return  # transient outcomes are never cached
        if resolution.status is ResolutionStatus.OK:
            ttl = min(ttl, CACHE_OK_MAX_SECONDS)
        if resolution.expires_at is not None:
            ttl = min(ttl, resolution.expires_at - self.wall_clock())
        if ttl <= 0:
            return
        try:
            self.cache.put_r2_copy(CACHE_PREFIX + link.raw_url, resolution_record(resolution), ttl)
        except Exception:
            logger.debug("RESOLVE: cache write failed", exc_info=True)

    def _count(self, name: str, label: str) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.incr(name, label=label)
        except Exception:
            logger.debug("RESOLVE: metrics failed", exc_info=True)


def _as_delivery_link(link: LinkLike) -> DeliveryLink:
    if isinstance(link, DeliveryLink):
        return link
    return DeliveryLink(provider=link.provider, raw_url=link.raw_url, direct_url=link.direct_url)


def _transition_logger(provider: str) -> Callable[[BreakerTransition], None]:
    def log(change: BreakerTransition) -> None:
        if change.current is BreakerState.OPEN:
            logger.warning("RESOLVE: circuit open provider=%s after %d consecutive failures; its links go out "
                           "unresolved until a trial", provider, change.consecutive_failures)
        elif change.current is BreakerState.CLOSED:
            logger.info("RESOLVE: circuit closed provider=%s", provider)

    return log


class ResolvingOffloader:
    """The ``Offloader`` the enrichment stage uses when links are resolved: resolve each link, then make the R2
    copies (each listed file of a resolved transfer on its own, within ``max_email_bytes``; otherwise the link, in
    the resolved direct form where the resolution gives one), then attach each link's resolution."""

    def __init__(self, resolution: LinkResolution, offloader: Any, *, budget_seconds: float,
                 max_email_bytes: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.resolution = resolution
        self.offloader = offloader
        self.budget_seconds = budget_seconds
        self.max_email_bytes = max_email_bytes
        self.clock = clock

    def offloads_any(self, links: Sequence[LinkLike]) -> bool:
        return self.resolution.wants(links) or self.offloader.offloads_any(links)

    def offload_links(self, email_id: str, links: list[Any]) -> list[EnrichedLink]:
        deadline = self.clock() + self.budget_seconds
        resolutions = self.resolution.resolve_links(email_id, links, deadline)
        plan = self._plan(email_id, links, resolutions)
        try:
            copied = list(self.offloader.offload_links(email_id, [copy for _, _, copy in plan]))
        except Exception:
            logger.warning("R2_TRANSFER: offloader failed email_id=%s; sending source URLs", email_id, exc_info=True)
            copied = []
        if len(copied) != len(plan):
            copied = [OffloadedLink(copy.provider, copy.raw_url, copy.direct_url) for _, _, copy in plan]
        return [self._enriched(index, link, resolution, plan, copied)
                for index, (link, resolution) in enumerate(zip(links, resolutions, strict=True))]

    def _plan(self, email_id: str, links: list[Any],
              resolutions: list[Resolution]) -> list[tuple[int, int | None, DeliveryLink]]:
        """What to copy: (link index, file index or None for the link itself, the link as the copy fetches it)."""
        plan: list[tuple[int, int | None, DeliveryLink]] = []
        left = self.max_email_bytes
        skipped = 0
        for index, (link, resolution) in enumerate(zip(links, resolutions, strict=True)):
            public = self._public_form(link.provider)
            files = _copyable_files(link, resolution)
            if not files:
                plan.append((index, None, _copy_form(link, resolution, public)))
                continue
            for number, item in files:
                if left is not None and item.size_bytes is not None:
                    if item.size_bytes > left:
                        skipped += 1
                        continue
                    left -= item.size_bytes
                # the file URL is what is copied (and what is_copyable judges), never the landing page
                download = public(item.download_url or "")
                plan.append((index, number, DeliveryLink(link.provider, download, download)))
        if skipped:
            logger.warning("R2_TRANSFER: %d file(s) over R2_EMAIL_MAX_BYTES keep their source URLs email_id=%s",
                           skipped, email_id)
        return plan

    def _public_form(self, provider: str) -> Callable[[str], str]:
        """How a URL a resolver got on the provider's configured base is emitted and copied (its public origin)."""
        config = self.resolution.providers.get(provider)
        endpoint = config.endpoint if config is not None else None
        return endpoint.public_form if endpoint is not None else _unchanged

    @staticmethod
    def _enriched(index: int, link: Any, resolution: Resolution, plan: list[tuple[int, int | None, DeliveryLink]],
                  copied: list[Any]) -> EnrichedLink:
        own = next((copy for (at, number, _), copy in zip(plan, copied, strict=True) if at == index and number is None),
                   None)
        per_file: dict[int, Any] = {number: copy for (at, number, _), copy in zip(plan, copied, strict=True)
                                    if at == index and number is not None}
        file_r2_urls = tuple(getattr(per_file.get(number), "r2_url", None) for number in range(len(resolution.files)))
        if own is not None:
            return EnrichedLink(link.provider, link.raw_url, own.direct_url, own.r2_url, own.original_filename,
                                resolution, file_r2_urls)
        single = per_file.get(0) if len(resolution.files) == 1 else None
        return EnrichedLink(link.provider, link.raw_url, link.direct_url, getattr(single, "r2_url", None),
                            getattr(single, "original_filename", None) if getattr(single, "r2_url", None) else None,
                            resolution, file_r2_urls)

    def close(self) -> None:
        closer = getattr(self.offloader, "close", None)
        if closer is not None:
            closer()


def _copyable_files(link: Any, resolution: Resolution) -> list[tuple[int, ResolvedFile]]:
    """The files of a resolved link that R2 copies one by one (each with a download URL, of a provider whose files
    may be copied; the landing page itself may be one that never is). Each file URL is judged again on its own
    shape by the offloader (``is_copyable``) and checked against the Worker's hosts."""
    if resolution.status is not ResolutionStatus.OK or not resolution.files or not _provider_copies(link.provider):
        return []
    return [(number, item) for number, item in enumerate(resolution.files) if item.download_url]


def _provider_copies(provider: str) -> bool:
    from email_processing.providers import provider_named

    try:
        return provider_named(provider).copyable
    except KeyError:
        return False


def _unchanged(url: str) -> str:
    return url


def _copy_form(link: Any, resolution: Resolution, public: Callable[[str], str] = _unchanged) -> DeliveryLink:
    """The link as the R2 copy fetches it and the webhook emits it: the resolution's direct form (on its public
    origin) when it gives one that is https on the provider's own hosts (decided by the parser receivers use), else
    the extractor's."""
    plain = _as_delivery_link(link)
    if resolution.status is not ResolutionStatus.OK or not resolution.direct_url:
        return plain
    checked = check_url(public(resolution.direct_url), provider_hosts(ProviderConfig(link.provider)))
    if isinstance(checked, RefusedUrl):
        logger.warning("SECURITY: a resolution's direct URL is outside the %s hosts host=%s; the extractor's is kept",
                       link.provider, checked.host)
        return plain
    # the direct form is what is fetched and what is_copyable judges (a landing page never is copied; its file is)
    return dataclasses.replace(plain, raw_url=checked.href, direct_url=checked.href)
