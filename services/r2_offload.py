"""R2 offload: asks the Cloudflare Worker to copy each Dropbox delivery link into R2, with a guaranteed fallback.

This module composes three parts: the Worker client (services/r2_worker_client.py), the presigner
(services/r2_presign.py; boto3, imported only when presigning is on) and a circuit breaker
(services/circuit_breaker.py) that skips a failing Worker. It owns the policy around them: the allow-list of hosts
that may ever be sent to the Worker, object keys, adaptive timeouts, which failures count against the Worker, the
reuse of copies recorded in the state store, the per-email time budget, and the R2_TRANSFER logs and metrics.
R2 is an optimisation, never a dependency: ``offload_links`` never raises and returns one ``OffloadedLink`` per
input link, in order, with ``r2_url=None`` and the source URLs kept whenever anything goes wrong. The parts' errors
are translated into ``R2OffloadError``, the module's own failure type, which never leaves it.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from email_processing.links import LinkLike, is_copyable, is_dropbox_folder
from email_processing.orchestrator import NullOffloader, OffloadedLink, source_only
from email_processing.providers import PROVIDERS
from email_processing.urls import CheckedUrl, RefusedUrl, check_url
from services.circuit_breaker import BreakerState, BreakerTransition, CircuitBreaker
from services.r2_presign import Presigner, R2PresignError, build_presigner
from services.r2_worker_client import R2WorkerClient, R2WorkerError

if TYPE_CHECKING:
    import requests

    from config import R2Config

logger = logging.getLogger(__name__)

# Providers whose direct-download URLs answer with the file itself (after redirects the Worker re-checks), and the
# domains (and their subdomains) such URLs may point at: the registry's copyable providers with download hosts, the
# same list ``make providers-json`` gives the Worker. Nothing else is ever sent to the Worker.
OFFLOADED_PROVIDERS: dict[str, tuple[str, ...]] = {
    provider.name: provider.download_hosts for provider in PROVIDERS if provider.copyable and provider.download_hosts}
# The query parameters that make a link what it is, per provider: the key form keeps these (sorted) and drops the
# rest, so junk such as ``?a=1`` does not make another copy while Dropbox's ``rlkey``/``st`` (which grant access)
# stay (and ``e``, which the link extractor keeps in the direct URL). A provider without an entry keeps its query
# verbatim.
KEY_FORM_PARAMS: dict[str, frozenset[str]] = {
    provider.name: provider.key_params for provider in PROVIDERS if provider.key_params is not None}
MAX_PARALLEL_LINKS = 4
# Added to the longest per-link timeout of an email to bound the R2 time the email may spend in total.
EMAIL_BUDGET_GRACE_SECONDS = 5.0
MAX_FILE_NAME_CHARS = 120
DEFAULT_FILE_NAME = "file"

# The circuit counts failures of the Worker itself and nothing else: no connection, a timeout, a 5xx, a 401 (its
# token is wrong: every call would fail). Anything else the Worker answers is that link's outcome, which shows the
# Worker is up and resets the count: a 403 policy refusal, another 4xx, HTTP 200 ``success: false`` (issue 16: five
# links the Worker refused used to open the circuit for everyone). An unreadable answer counts too.
_WORKER_FAILURE_REASONS = frozenset({"timeout", "connection_error", "invalid_json", "unexpected_error", "http_401"})


class R2OffloadError(Exception):
    """One Worker call (or presign) did not produce a usable R2 URL; ``reason`` is the snake_case log reason."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason if not detail else f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class R2CopyStore(Protocol):
    """The part of the state store that remembers copies already made (see ARCHITECTURE.md)."""

    def get_r2_copy(self, source_url: str) -> dict | None: ...

    def put_r2_copy(self, source_url: str, record: dict, ttl_seconds: float) -> None: ...


class Metrics(Protocol):
    def incr(self, name: str, amount: int = 1, label: str | None = None) -> None: ...


# --- pure helpers: URL normalisation, allow-list, object keys -------------------------------------------------

def normalise_source_url(url: str) -> str:
    """Canonical form sent to the Worker and used as the reuse key: lower-case scheme and host, no default port,
    no fragment. Path and query are kept verbatim (Dropbox's ``rlkey``/``st`` grant access)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    netloc = host
    default_port = {"https": 443, "http": 80}.get(scheme)
    if parts.port is not None and parts.port != default_port:
        netloc = f"{host}:{parts.port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def key_form(provider: str, url: str) -> str:
    """The link's canonical key form: ``normalise_source_url`` with, for a provider listed in ``KEY_FORM_PARAMS``,
    only its identifying query parameters kept, sorted by name then value. Sent to the Worker as ``source_url``
    and ``source_key``, hashed into the object key and used as the reuse key: one link, one object."""
    normalised = normalise_source_url(url)
    kept = KEY_FORM_PARAMS.get(provider.lower())
    if kept is None:
        return normalised
    parts = urlsplit(normalised)
    pairs = []
    for piece in parts.query.split("&"):
        name, _, value = piece.partition("=")
        if name in kept:
            pairs.append((name, value))
    pairs.sort()
    query = "&".join(f"{name}={value}" for name, value in pairs)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def is_allow_listed(provider: str, url: str) -> bool:
    """An https URL without credentials or port whose host, as the Worker reads it, lies within one of the
    provider's allow-listed domains (``email_processing.urls.check_url``)."""
    return isinstance(checked_source_url(provider, url), CheckedUrl)


def checked_source_url(provider: str, url: str) -> CheckedUrl | RefusedUrl:
    """``check_url`` against the provider's allow-list; a provider without one allows nothing."""
    domains = OFFLOADED_PROVIDERS.get(provider.lower())
    if not domains:
        return RefusedUrl("host", "-")
    return check_url(url, domains)


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,10}$")


def file_name_for(url: str) -> str:
    """The URL's last path segment, sanitised, when it has an extension; ``file`` otherwise."""
    segment = posixpath.basename(urlsplit(url).path.rstrip("/"))
    name = unquote(segment)
    name = _UNSAFE_NAME_CHARS.sub("_", name).strip("._-")
    if not name or not _EXTENSION.search(name) or name.startswith("."):
        return DEFAULT_FILE_NAME
    stem, dot, ext = name.rpartition(".")
    if not stem.strip("._-"):
        return DEFAULT_FILE_NAME
    if len(name) > MAX_FILE_NAME_CHARS:
        name = stem[: MAX_FILE_NAME_CHARS - len(ext) - 1] + dot + ext
    return name


def object_key_for(provider: str, source_url: str) -> str:
    """``<provider>/<8 hex>/<8 hex>/<file name>`` from the SHA-256 of the normalised URL: the same link always
    lands on the same object."""
    digest = hashlib.sha256(source_url.encode("utf-8")).hexdigest()
    return f"{provider.lower()}/{digest[:8]}/{digest[8:16]}/{file_name_for(source_url)}"


def endpoint_origin(url: str | None) -> str:
    """``scheme://host[:port]`` of the Worker URL: what may be logged (its path or query may be a capability)."""
    if not url:
        return "-"
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], "", "", ""))


# --- the Worker's circuit ---------------------------------------------------------------------------------------

def worker_circuit_breaker(failure_threshold: int, cooldown_seconds: float,
                           clock: Callable[[], float] = time.monotonic) -> CircuitBreaker:
    """The breaker that skips a failing Worker, logging its changes of state as R2_TRANSFER lines."""
    cooldown = float(cooldown_seconds)

    def log_transition(change: BreakerTransition) -> None:
        if change.current is BreakerState.OPEN:
            logger.warning("R2_TRANSFER: circuit open after %d consecutive Worker failures; links keep their source "
                           "URLs for %.0f s, then one trial call", change.consecutive_failures, cooldown)
        elif change.current is BreakerState.HALF_OPEN:
            logger.info("R2_TRANSFER: circuit half-open, trying one Worker call")
        else:
            logger.info("R2_TRANSFER: circuit closed, the Worker answered again")

    return CircuitBreaker(failure_threshold, cooldown_seconds, clock, on_transition=log_transition)


# --- the offloaders ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Outcome:
    """What one link's attempt produced; logged and counted by the caller's thread."""

    r2_url: str | None = None
    object_key: str | None = None
    original_filename: str | None = None
    reason: str | None = None        # set when falling back
    detail: str | None = None
    reused: bool = False


class R2Offloader:
    """Copies Dropbox links to R2 through the Worker; see the module docstring for the guarantees."""

    def __init__(self, r2: R2Config, copy_store: R2CopyStore | None, metrics: Metrics | None = None, *,
                 session: requests.Session | None = None, presigner: Presigner | None = None,
                 clock: Callable[[], float] = time.monotonic, max_parallel: int = MAX_PARALLEL_LINKS,
                 budget_grace_seconds: float = EMAIL_BUDGET_GRACE_SECONDS) -> None:
        self._max_parallel = max(1, int(max_parallel))
        self._worker = R2WorkerClient.from_config(r2, pool_maxsize=self._max_parallel * 2, session=session)
        self._bucket = r2.bucket_name
        self._timeout = float(r2.fetch_timeout_seconds)
        self._folder_timeout = float(r2.fetch_timeout_folder_seconds)
        self._retention_seconds = float(r2.retention_hours) * 3600.0
        self._max_bytes = int(r2.max_bytes)
        self._copy_store = copy_store
        self._metrics = metrics
        self._presigner: Presigner = presigner if presigner is not None else build_presigner(r2)
        self._budget_grace = float(budget_grace_seconds)
        self._email_budget = float(r2.email_budget_seconds)
        self.breaker = worker_circuit_breaker(r2.circuit_failures, r2.circuit_cooldown_seconds, clock)

    def close(self) -> None:
        self._worker.close()

    # -- public verb

    def offload_links(self, email_id: str, links: Sequence[LinkLike]) -> list[OffloadedLink]:
        """One ``OffloadedLink`` per link, in input order; never raises. The links run concurrently (at most
        ``MAX_PARALLEL_LINKS`` at a time) and the whole call is bounded by the longest link timeout plus
        ``EMAIL_BUDGET_GRACE_SECONDS`` and by R2_EMAIL_BUDGET_SECONDS; links not finished by then keep their
        source URLs (reason=timeout)."""
        links = list(links)
        if not links:
            return []
        try:
            outcomes = self._run_bounded(email_id, links)
        except Exception:  # a defect here must still not cost the email its webhook
            logger.warning("R2_TRANSFER: unexpected error while offloading; all links keep their source URLs "
                           "email_id=%s", email_id, exc_info=True)
            outcomes = [_Outcome(reason="unexpected_error") for _ in links]
        results = []
        for link, outcome in zip(links, outcomes, strict=True):
            results.append(self._report(email_id, link, outcome))
        return results

    # -- concurrency

    def _budget_for(self, links: Sequence[LinkLike]) -> float:
        """The longest link timeout plus the grace, never more than R2_EMAIL_BUDGET_SECONDS."""
        longest = max(self.timeout_for(link.direct_url) for link in links)
        return min(longest + self._budget_grace, self._email_budget)

    def offloads_any(self, links: Sequence[LinkLike]) -> bool:
        """True when at least one of ``links`` is of a provider whose files are copied to R2 (worth queueing the
        email as ``enriching``)."""
        return any(_offloaded(link) for link in links)

    def timeout_for(self, url: str) -> float:
        """The Worker call timeout for this URL: longer for Dropbox folders, which Dropbox zips on the fly."""
        try:
            return self._folder_timeout if is_dropbox_folder(url) else self._timeout
        except Exception:
            return self._timeout

    def _run_bounded(self, email_id: str, links: list[LinkLike]) -> list[_Outcome]:
        # Daemon threads rather than a ThreadPoolExecutor: a Worker call still hanging when the budget runs out
        # must not hold up the interpreter's exit (the shutdown budget is shorter than the folder timeout).
        deadline = time.monotonic() + self._budget_for(links)
        results: list[_Outcome | None] = [None] * len(links)
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(links)):
            todo.put(index)
        finished = threading.Condition()
        done = [0]

        def work() -> None:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                if time.monotonic() < deadline:
                    outcome = self._attempt_safely(email_id, links[index])
                else:
                    outcome = _Outcome(reason="timeout", detail="email budget spent")
                with finished:
                    results[index] = outcome
                    done[0] += 1
                    finished.notify_all()

        for number in range(min(self._max_parallel, len(links))):
            threading.Thread(target=work, name=f"r2-offload-{number}", daemon=True).start()
        with finished:
            finished.wait_for(lambda: done[0] == len(links), timeout=max(0.0, deadline - time.monotonic()))
            snapshot = list(results)
        return [outcome if outcome is not None else _Outcome(reason="timeout", detail="email budget spent")
                for outcome in snapshot]

    # -- one link

    def _attempt_safely(self, email_id: str, link: LinkLike) -> _Outcome:
        try:
            return self._attempt(email_id, link)
        except R2OffloadError as exc:
            return _Outcome(reason=exc.reason, detail=exc.detail)
        except Exception as exc:
            logger.debug("R2_TRANSFER: unexpected error email_id=%s", email_id, exc_info=True)
            return _Outcome(reason="unexpected_error", detail=type(exc).__name__)

    def _attempt(self, email_id: str, link: LinkLike) -> _Outcome:
        provider = (link.provider or "").lower()
        if not _offloaded(link):
            return _Outcome(reason="unsupported_provider")
        # Checked on the URL as extracted, before normalisation could drop anything (credentials, a bad port); the
        # Worker is sent the checked URL's canonical form, so it reads the host that was checked.
        checked = checked_source_url(provider, link.direct_url)
        if isinstance(checked, RefusedUrl):
            logger.warning("SECURITY: refused to send a URL outside the %s allow-list to the R2 Worker host=%s "
                           "email_id=%s", provider, checked.host, email_id)
            return _Outcome(reason="not_allow_listed")
        source_url = key_form(provider, checked.href)
        object_key = object_key_for(provider, source_url)

        record = self._reusable_copy(source_url)
        if record is not None:
            return self._presigned(_Outcome(r2_url=record.get("r2_url"),
                                            object_key=record.get("object_key") or object_key,
                                            original_filename=record.get("original_filename"), reused=True))

        if not self.breaker.allow():
            return _Outcome(reason="circuit_open")
        try:
            answer = self._call_worker(email_id, provider, source_url, object_key, self.timeout_for(source_url))
        except R2OffloadError as exc:
            if _counts_against_worker(exc.reason):
                self.breaker.record_failure()
            else:
                self.breaker.record_success()
            raise
        except BaseException:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        self._remember_copy(source_url, answer)
        return self._presigned(answer)

    def _call_worker(self, email_id: str, provider: str, source_url: str, object_key: str,
                     timeout: float) -> _Outcome:
        try:
            copy = self._worker.copy(source_url=source_url, object_key=object_key, bucket=self._bucket,
                                     provider=provider, email_id=email_id, timeout=timeout,
                                     source_key=source_url, max_bytes=self._max_bytes)
        except R2WorkerError as exc:
            raise R2OffloadError(exc.reason, exc.detail) from None
        # A private bucket has no public URL: the Worker answers r2_url null and we presign the object key.
        if copy.r2_url is None and not getattr(self._presigner, "enabled", False):
            raise R2OffloadError("missing_r2_url")
        return _Outcome(r2_url=copy.r2_url, object_key=copy.object_key, original_filename=copy.original_filename)

    def _presigned(self, outcome: _Outcome) -> _Outcome:
        if not getattr(self._presigner, "enabled", False):
            return outcome
        if not outcome.object_key:
            raise R2OffloadError("presign_failed", "no object key")
        try:
            url = self._presigner.presign(outcome.object_key, outcome.r2_url)
        except R2PresignError as exc:
            raise R2OffloadError("presign_failed", exc.detail) from None
        return _Outcome(r2_url=url, object_key=outcome.object_key, original_filename=outcome.original_filename,
                        reused=outcome.reused)

    # -- reuse records (a broken store costs reuse, never the link)

    def _reusable_copy(self, source_url: str) -> dict | None:
        if self._copy_store is None:
            return None
        try:
            record = self._copy_store.get_r2_copy(source_url)
        except Exception as exc:
            logger.warning("R2_TRANSFER: copy record lookup failed (%s); calling the Worker", type(exc).__name__)
            return None
        if isinstance(record, dict) and isinstance(record.get("r2_url"), str) and record["r2_url"]:
            return record
        if (isinstance(record, dict) and getattr(self._presigner, "enabled", False)
                and isinstance(record.get("object_key"), str) and record["object_key"]):
            return record  # a private-bucket copy: presigned afresh each time
        return None

    def _remember_copy(self, source_url: str, outcome: _Outcome) -> None:
        if self._copy_store is None:
            return
        record = {"r2_url": outcome.r2_url, "object_key": outcome.object_key,
                  "original_filename": outcome.original_filename}
        try:
            self._copy_store.put_r2_copy(source_url, record, self._retention_seconds)
        except Exception as exc:
            logger.warning("R2_TRANSFER: could not record the copy for reuse (%s)", type(exc).__name__)

    # -- reporting (caller's thread)

    def _report(self, email_id: str, link: LinkLike, outcome: _Outcome) -> OffloadedLink:
        if outcome.reason is None and outcome.r2_url:
            logger.info("R2_TRANSFER: success provider=%s email_id=%s object_key=%s reused=%s", link.provider,
                        email_id, outcome.object_key, outcome.reused)
            self._count("r2_success")
            return OffloadedLink(provider=link.provider, raw_url=link.raw_url, direct_url=link.direct_url,
                                 r2_url=outcome.r2_url, original_filename=outcome.original_filename)
        reason = outcome.reason or "unexpected_error"
        if outcome.detail:
            logger.warning("R2_TRANSFER: fallback to source URL provider=%s reason=%s email_id=%s detail=%s",
                           link.provider, reason, email_id, outcome.detail)
        else:
            logger.warning("R2_TRANSFER: fallback to source URL provider=%s reason=%s email_id=%s", link.provider,
                           reason, email_id)
        self._count("r2_fallback", label=reason)
        return source_only(link)

    def _count(self, name: str, label: str | None = None) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics.incr(name, 1, label=label)
        except Exception:
            logger.debug("R2_TRANSFER: metrics hook failed", exc_info=True)


def _offloaded(link: LinkLike) -> bool:
    """A link R2 copies: of a provider the Worker fetches, and of a shape that is a file or folder (not a Dropbox
    ``/l/`` notification link, whose fetch would count as the recipient's click, nor an upload page)."""
    return (link.provider or "").lower() in OFFLOADED_PROVIDERS and is_copyable(link)


def _counts_against_worker(reason: str) -> bool:
    """True for a failure of the Worker itself (see ``_WORKER_FAILURE_REASONS``); a link's own outcome is False."""
    if reason in _WORKER_FAILURE_REASONS:
        return True
    if reason.startswith("http_5"):
        return True
    return False


def build_offloader(r2: R2Config | None, copy_store: R2CopyStore | None,
                    metrics: Metrics | None = None) -> NullOffloader | R2Offloader:
    """The offloader ``r2`` asks for: ``NullOffloader`` when there is none or R2_FETCH_ENABLED is not true."""
    if r2 is None:
        return NullOffloader()
    if not r2.fetch_enabled:
        if r2.fetch_endpoint:
            logger.info("R2_TRANSFER: R2 offload is off (R2_FETCH_ENDPOINT is set but R2_FETCH_ENABLED is not true); "
                        "webhooks carry the source URLs")
        return NullOffloader()
    offloader = R2Offloader(r2, copy_store, metrics)
    presign = r2.presign_enabled
    logger.info("R2_TRANSFER: R2 offload on worker=%s timeout=%.0fs folder_timeout=%.0fs presign=%s",
                endpoint_origin(r2.fetch_endpoint), r2.fetch_timeout_seconds,
                r2.fetch_timeout_folder_seconds, presign)
    return offloader
