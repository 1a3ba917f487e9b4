"""Mailboxes spread over the cluster: who is a member, which member should hold which mailbox, when to hand over.

With Redis every worker process is a member: it writes a heartbeat (``render_signal:members``, a sorted set of
member id → last beat, Redis server time, and ``render_signal:members_since``, member id → first beat) every TTL/3;
a member is live while its last beat is less than one lease TTL old. Rendezvous hashing over the live members
decides which member a mailbox prefers (the highest SHA-256 of ``member|mailbox``): every member computes the same
answer from the same view, and a member joining or leaving moves only the mailboxes it wins or held.

``SpreadPolicy`` is what one mailbox's lease keeper asks (``background.lease.LeaseKeeper``):

- ``may_acquire()``: the preferred member takes a free lease at once; any other member only once the lease has
  been seen free for ``grace`` seconds (TTL + retry: the preferred one had its chance, or is gone), and never
  beyond ``MAX_MAILBOXES_PER_PROCESS`` held mailboxes;
- ``should_hand_over()``: the holder releases a mailbox whose preferred member is another live one that has been
  alive for at least 2 × TTL (a deploy or a worker recycle moves mailboxes once, not back and forth), counted as
  ``mailbox_moves``.

Exclusivity never depends on this module: the lease (SET NX with a token) decides who holds a mailbox; the policy
only decides who tries. When Redis does not answer, the last view is kept and any member may try a free lease.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)

MEMBERS_KEY = "render_signal:members"
MEMBERS_SINCE_KEY = "render_signal:members_since"
FORGET_AFTER_TTLS = 20  # a member silent this long is removed from the sets


def member_id() -> str:
    """This process's member id: host, pid and a random suffix (a recycled pid is another member)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def preferred_member(mailbox_id: str, members: list[str]) -> str | None:
    """Rendezvous hashing: the member with the highest SHA-256 of ``member|mailbox``; None without members."""
    if not members:
        return None
    return max(members, key=lambda member: hashlib.sha256(f"{member}|{mailbox_id}".encode()).digest())


class Membership:
    """This process's heartbeat and its view of the live members (refreshed at most every TTL/3, thread-safe)."""

    def __init__(self, redis_client: Any, ttl_seconds: float, *, member: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = redis_client
        self.ttl = float(ttl_seconds)
        self.member = member or member_id()
        self._clock = clock
        self._lock = threading.Lock()
        self._refreshed_at = float("-inf")
        self._live: list[str] = []
        self._since: dict[str, float] = {}
        self._server_now = 0.0
        self._failing = False

    def refresh(self, force: bool = False) -> None:
        """Beat and re-read the members when TTL/3 has passed since the last time (or ``force``). Never raises."""
        with self._lock:
            if not force and self._clock() - self._refreshed_at < self.ttl / 3.0:
                return
            self._refreshed_at = self._clock()
        try:
            seconds, micros = self.redis.time()
            now = float(seconds) + float(micros) / 1e6
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(MEMBERS_KEY, {self.member: now})
            pipe.zadd(MEMBERS_SINCE_KEY, {self.member: now}, nx=True)
            forget = now - FORGET_AFTER_TTLS * self.ttl
            pipe.zrangebyscore(MEMBERS_KEY, "-inf", forget)
            pipe.zremrangebyscore(MEMBERS_KEY, "-inf", forget)
            pipe.zrangebyscore(MEMBERS_KEY, now - self.ttl, "+inf")
            pipe.zrange(MEMBERS_SINCE_KEY, 0, -1, withscores=True)
            _, _, forgotten, _, live, since = pipe.execute()
            if forgotten:
                self.redis.zrem(MEMBERS_SINCE_KEY, *forgotten)
        except Exception as exc:  # Redis errors: keep the last view (the lease alone decides who holds what)
            if not self._failing:
                self._failing = True
                logger.warning("BG_POLLER: membership not refreshed (%s); keeping the last view", type(exc).__name__)
            return
        if self._failing:
            self._failing = False
            logger.info("BG_POLLER: membership refreshed again")
        with self._lock:
            self._live = sorted(str(member) for member in live)
            self._since = {str(member): float(score) for member, score in since}
            self._server_now = now

    def live_members(self) -> list[str]:
        with self._lock:
            return list(self._live)

    def preferred(self, mailbox_id: str) -> str | None:
        return preferred_member(mailbox_id, self.live_members())

    def alive_for(self, member: str) -> float:
        """Seconds ``member`` has been a member, by the last view (0 when unknown)."""
        with self._lock:
            since = self._since.get(member)
            return max(0.0, self._server_now - since) if since is not None else 0.0

    def leave(self) -> None:
        """Remove this process from the sets (on shutdown), so its mailboxes move at once. Never raises."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(MEMBERS_KEY, self.member)
            pipe.zrem(MEMBERS_SINCE_KEY, self.member)
            pipe.execute()
        except Exception:
            logger.debug("BG_POLLER: membership leave failed", exc_info=True)


class SpreadPolicy:
    """Whether this process should try, keep or hand over one mailbox's lease (see the module docstring)."""

    def __init__(self, membership: Membership, mailbox_id: str, *, lease_is_free: Callable[[], bool],
                 held_count: Callable[[], int], max_held: int | None, grace_seconds: float,
                 on_move: Callable[[str], None] = lambda mailbox_id: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.membership = membership
        self.mailbox_id = mailbox_id
        self.lease_is_free = lease_is_free
        self.held_count = held_count
        self.max_held = max_held
        self.grace = float(grace_seconds)
        self.on_move = on_move
        self._clock = clock
        self._free_since: float | None = None
        # After a hand-over the preferred member did not take up (it is full, or failing), this process took the
        # mailbox back: it keeps it for a while instead of handing it over again at once (no flapping).
        self._keep_until = float("-inf")

    def may_acquire(self) -> bool:
        self.membership.refresh()
        if self.max_held is not None and self.held_count() >= self.max_held:
            return False
        preferred = self.membership.preferred(self.mailbox_id)
        if preferred is None or preferred == self.membership.member:
            self._free_since = None
            return True
        try:
            free = self.lease_is_free()
        except Exception:
            free = True  # cannot tell: let the lease decide
        if not free:
            self._free_since = None
            return False
        now = self._clock()
        if self._free_since is None:
            self._free_since = now
        if now - self._free_since < self.grace:
            return False
        self._keep_until = now + 10 * self.membership.ttl
        return True

    def should_hand_over(self) -> bool:
        self.membership.refresh()
        preferred = self.membership.preferred(self.mailbox_id)
        if preferred is None or preferred == self.membership.member or self._clock() < self._keep_until:
            return False
        return self.membership.alive_for(preferred) >= 2 * self.membership.ttl

    def handed_over(self) -> None:
        logger.info("BG_POLLER: handing mailbox %s over to its preferred member %s", self.mailbox_id,
                    self.membership.preferred(self.mailbox_id))
        try:
            self.on_move(self.mailbox_id)
        except Exception:
            logger.debug("BG_POLLER: counting a mailbox move failed", exc_info=True)
