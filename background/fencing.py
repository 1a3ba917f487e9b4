"""Fencing: the writes of a mailbox's lease holder carry the epoch its lease was given, and the store refuses stale
ones (issue 17).

When a keeper acquires a mailbox's lease it asks the store for a new epoch (``StateStore.advance_epoch``: one more
than any holder before). ``FencedStore`` hands every claim, enqueue and checkpoint move of that mailbox's threads
the ``(mailbox id, epoch)`` fence; a process that lost the lease without noticing yet (frozen, partitioned) and
writes with its old epoch is refused by the store (``StaleFence``), which here becomes ``LeaseLost``: the threads
stop as they do for any loss. Recording a 2xx is never refused (the receiver has the webhook), only counted when
late (``late_acknowledgements``).
"""

from __future__ import annotations

from typing import Any

from background.lease import LeaseLost
from services.state_store import Fence, StaleFence


class LeaseFence:
    """The epoch of one mailbox's lease, as this process last acquired it."""

    def __init__(self, store: Any, mailbox_id: str) -> None:
        self.store = store
        self.mailbox_id = mailbox_id
        self.epoch: int | None = None

    def advance(self) -> None:
        """Called by the keeper right after acquiring the lease (before any thread acts under it)."""
        self.epoch = self.store.advance_epoch(self.mailbox_id)

    def current(self) -> Fence | None:
        return None if self.epoch is None else (self.mailbox_id, self.epoch)


class FencedStore:
    """The state store as one mailbox's threads see it: its fenced writes carry the lease's epoch."""

    def __init__(self, store: Any, fence: LeaseFence, lease: Any) -> None:
        self._store = store
        self._fence = fence
        self._lease = lease

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def enqueue(self, item: Any) -> bool:
        return self.enqueue_all([item])[0]

    def enqueue_all(self, items: Any) -> list[bool]:
        return self._fenced(self._store.enqueue_all, items)

    def set_checkpoint(self, mailbox: str, uidvalidity: int, last_uid: int) -> None:
        self._fenced(self._store.set_checkpoint, mailbox, uidvalidity, last_uid)

    def claim_due(self, *args: Any, **kwargs: Any) -> list:
        return self._fenced(self._store.claim_due, *args, **kwargs)

    def mark_delivered(self, *args: Any, **kwargs: Any) -> bool:
        return self._store.mark_delivered(*args, fence=self._fence.current(), **kwargs)

    def _fenced(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, fence=self._fence.current(), **kwargs)
        except StaleFence as exc:
            try:
                self._lease.verify()  # another holder: the lease's own check stops every thread at once
            except LeaseLost:
                pass
            raise LeaseLost(f"stale lease epoch ({exc})") from None
