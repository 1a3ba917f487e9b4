"""Work left behind by a mailbox or target that is no longer configured: found, reported, never silently stranded.

- Pending items of a removed target can never be delivered: they become dead letters with reason
  ``target_removed`` (replayable once the target is back). Only while at least one target is configured: with none,
  delivery is off as a whole, and the items wait.
- Pending items of a removed mailbox are still delivered to their target; the flag requests of a state key no
  configured mailbox uses are never applied (they expire with the retention). Both are reported.
``find_stranded`` is pure; ``settle_removed_targets`` is the one write, run by the lease holder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from config import ServiceConfig
from services.state_store import StateStoreError

logger = logging.getLogger(__name__)

TARGET_REMOVED = "target_removed"
NOT_IMAP_STATE_KEYS = frozenset({"(cli)"})  # items of process-email: no mailbox to flag in


@dataclass(frozen=True)
class Stranded:
    """Pending items per removed mailbox id and per removed target id, and flag requests per unused state key."""

    mailboxes: dict[str, int] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)
    flag_requests: dict[str, int] = field(default_factory=dict)
    pending_total: int = 0  # every pending item, stranded or not (how far settling has to look)

    def __bool__(self) -> bool:
        return bool(self.mailboxes or self.targets or self.flag_requests)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"mailboxes": dict(self.mailboxes), "targets": dict(self.targets),
                "flag_requests": dict(self.flag_requests)}

    def summary(self) -> str:
        parts = [f"{n} pending items of removed mailbox {key}" for key, n in sorted(self.mailboxes.items())]
        parts += [f"{n} pending items of removed target {key}" for key, n in sorted(self.targets.items())]
        parts += [f"{n} flag requests no mailbox applies under {key!r}"
                  for key, n in sorted(self.flag_requests.items())]
        return "; ".join(parts) or "nothing stranded"


def find_stranded(owners: dict[str, dict[str, int]], flag_keys: dict[str, int], config: ServiceConfig) -> Stranded:
    """What the store holds for mailboxes and targets ``config`` no longer has (``owners``: ``pending_owners()``)."""
    mailbox_ids = {mailbox.id for mailbox in config.mailboxes}
    target_ids = {target.id for target in config.delivered_targets}
    state_keys = {mailbox.state_key for mailbox in config.mailboxes} | NOT_IMAP_STATE_KEYS
    return Stranded(
        mailboxes={key: n for key, n in owners.get("mailboxes", {}).items() if key not in mailbox_ids and n},
        targets={key: n for key, n in owners.get("targets", {}).items() if key not in target_ids and n},
        flag_requests={key: n for key, n in flag_keys.items() if key not in state_keys and n},
        pending_total=sum(owners.get("targets", {}).values()))


def settle_removed_targets(store, config: ServiceConfig, stranded: Stranded) -> int:
    """Dead-letter the pending items of every removed target (``target_removed``); returns how many. One item that
    fails is logged and left for the next run; the others go on."""
    if not config.targets or not stranded.targets:
        return 0
    target_ids = {target.id for target in config.delivered_targets}
    settled = 0
    for item in store.list_items("pending", limit=stranded.pending_total):
        if item.target_id in target_ids:
            continue
        try:
            if store.dead_letter(item.event_id, TARGET_REMOVED, None, f"target {item.target_id} is not configured"):
                settled += 1
        except StateStoreError as exc:
            logger.warning("STATE: could not dead-letter %s of removed target %s (%s)", item.event_id,
                           item.target_id, exc)
    if settled:
        logger.warning("STATE: %d pending items of removed targets are dead letters now (reason %s, replayable)",
                       settled, TARGET_REMOVED)
    return settled


def survey(store, config: ServiceConfig) -> Stranded:
    """Read what is stranded now (the holder's housekeeping and start-up)."""
    return find_stranded(store.pending_owners(), store.flag_keys(), config)
