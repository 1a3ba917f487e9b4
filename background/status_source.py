"""What the status routes read about this worker: ``StatusSource``, built by ``ServiceRuntime.status_source()``.

``/health``, ``/api/status``, ``/metrics`` and ``/`` read only this, never the runtime: a few values fixed when the
app is built, and the views the background keeps, each behind a call because they change (the background starts
after the app is built, and Gunicorn forks in between) and the store is opened only when first read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from config import TargetConfig
    from services.state_store import StateStore


@dataclass(frozen=True, kw_only=True)
class StatusSource:
    version: str
    status_api_token: str | None = field(repr=False)   # a secret: never in a repr
    background_mode: str                               # enabled | disabled | not_configured
    lease_backend: str                                 # redis | file
    shared_redis: bool                                 # REDIS_URL is set: the holder's status is readable here
    mailbox_folder: str                                # the folder the poller watches (IMAP_MAILBOX)
    open_store: Callable[[], StateStore]               # the shared state store (opened on first use)
    instance: Callable[[], dict]                       # this process: host, pid, worker, uptime, version
    poller_snapshot: Callable[[], dict]                # this worker's own poller status
    lease_snapshot: Callable[[], dict | None]          # this worker's lease (None while no background runs)
    cluster_view: Callable[[], dict | None]            # the status observer's cached view (None likewise)
    threads_dead: Callable[[], bool]                   # the background died or never started: restart helps
    mailbox_ids: tuple[str, ...] = ()                  # every configured mailbox, in the file's order
    targets: tuple[TargetConfig, ...] = ()             # every configured target (their URLs are never shown)
