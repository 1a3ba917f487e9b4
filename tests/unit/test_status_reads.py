"""``read_cluster_state``: what one status answer reads from the store, and how often."""

from __future__ import annotations

import time

from background.status_source import StatusSource
from routes.status_view import read_cluster_state


class CountingStore:
    """The reads of one status answer, counted; the per-item scans (target_stats, pending_owners) must not run."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        answers = {"read_status": None, "counter_series": [], "outbox_stats": {"pending": 2}, "parked_count": 0,
                   "list_parked": [], "read_mailbox_statuses": {}, "recent": [], "paused_targets": {},
                   "outbox_breakdown": {"targets": {"make": {"pending": 2, "held": 0, "dead": 0,
                                                             "oldest_pending_age_s": 5.0}},
                                        "mailboxes": {"studio": 2}}}

        def call(*args, **kwargs):
            self.calls.append(name)
            if name not in answers:
                raise AssertionError(f"status answer read {name}")
            return answers[name]
        return call


def source(store: CountingStore) -> StatusSource:
    return StatusSource(version="v", status_api_token=None, background_mode="enabled", lease_backend="redis",
                        shared_redis=True, mailbox_folder="INBOX", open_store=lambda: store, instance=dict,
                        poller_snapshot=dict, lease_snapshot=lambda: None, cluster_view=lambda: None,
                        threads_dead=lambda: False, mailbox_ids=("default", "studio"))


def test_one_status_answer_reads_the_targets_and_the_backlog_in_one_pass_over_the_pending_items():
    store = CountingStore()
    reads = read_cluster_state(source(store), time.time())
    assert store.calls.count("outbox_breakdown") == 1
    assert "target_stats" not in store.calls and "pending_owners" not in store.calls
    assert reads.target_stats == {"make": {"pending": 2, "held": 0, "dead": 0, "oldest_pending_age_s": 5.0}}
    assert reads.backlog == {"studio": 2}
