"""The service's background machinery in the test process (fast), against real servers.

``pipeline_factory(env, config=None) -> RunningPipeline`` builds ``Settings.from_env(env)``, a ``ServiceRuntime``
(on ``config`` when given, e.g. a mailbox with another id; else the one the settings describe) and starts
its background threads exactly as a Gunicorn worker does (``start_background``); everything started is stopped
at teardown. Tests that need real processes (kill -9, several containers) use ``service_factory`` instead.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any, Callable, Mapping

from background.runner import ServiceRuntime
from config import ServiceConfig
from settings import Settings

FAST = {
    "IMAP_TIMEOUT_SECONDS": "2",
    "IMAP_RECONNECT_MAX_SECONDS": "1",
    "EMAIL_POLLING_INTERVAL_SECONDS": "1",
    "REDIS_LOCK_TTL_SECONDS": "3",
    "LEASE_RETRY_SECONDS": "0.3",
    "REDIS_TIMEOUT_SECONDS": "1",
    "WEBHOOK_ALLOW_INSECURE": "true",
    "WEBHOOK_TIMEOUT_SECONDS": "2",
    "WEBHOOK_RETRY_SCHEDULE": "0.2,0.4,0.8",
    "HEARTBEAT_INTERVAL_SECONDS": "5",
    "FIRST_START_MAX_AGE_HOURS": "72",
}


def service_env(account=None, receiver=None, redis_url: str | None = None, state_dir: str | None = None,
                **overrides: Any) -> dict[str, str]:
    env = dict(FAST)
    if account is not None:
        env.update(account.settings_env())
    if receiver is not None:
        env["WEBHOOK_URL"] = receiver.url
    if redis_url:
        env["REDIS_URL"] = redis_url
    env["STATE_DIR"] = state_dir or tempfile.mkdtemp(prefix="state-")
    env.update({key: str(value) for key, value in overrides.items()})
    return env


class RunningPipeline:
    def __init__(self, env: Mapping[str, str], config: ServiceConfig | None = None) -> None:
        self.settings = Settings.from_env(env)
        self.runtime = ServiceRuntime(self.settings, config)
        self.stopped = False

    @property
    def store(self):
        return self.runtime.store

    @property
    def background(self):
        return self.runtime.background

    def start(self) -> "RunningPipeline":
        self.runtime.start_background()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if not self.stopped:
            self.stopped = True
            self.runtime.stop_background(timeout)

    def wait_until(self, check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise AssertionError(f"{what} not reached within {timeout}s; poller={self.runtime.poller_status.snapshot()}")

    def wait_until_holding(self, timeout: float = 10.0) -> None:
        self.wait_until(lambda: self.background is not None and self.background.lease.holds_locally(), timeout,
                        "lease held")
