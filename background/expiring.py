"""Pending webhooks whose links stop working before their retry window ends (issue 19): a receiver that is down
for long enough will get a body whose transfer links have expired. The status page shows them, so an operator can
act (mend the receiver, or tell the sender) while the files can still be fetched."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from timestamps import epoch_of, iso_utc

EXPIRING_SHOWN = 20          # entries on /api/status and the page
EXPIRING_SCANNED = 200       # pending items read per observation (oldest first)


def links_expiring(items: Iterable[Any], retry_hours_of: Callable[[str], float | None],
                   limit: int = EXPIRING_SHOWN) -> list[dict]:
    """``{event_id, target, expires_at, retry_until}`` for each pending item (an ``OutboxItem``) one of whose links
    expires before ``created_at`` + its target's retry hours; soonest expiry first, at most ``limit``."""
    found = []
    for item in items:
        hours = retry_hours_of(item.target_id)
        if hours is None:
            continue
        retry_until = float(item.created_at) + hours * 3600.0
        expiries = [epoch for epoch in (epoch_of(link.get("expires_at")) for link in _links(item.payload))
                    if epoch is not None and epoch < retry_until]
        if expiries:
            soonest = min(expiries)
            found.append((soonest, {"event_id": item.event_id, "target": item.target_id,
                                    "expires_at": iso_utc(soonest), "retry_until": iso_utc(retry_until)}))
    found.sort(key=lambda pair: pair[0])
    return [entry for _, entry in found[:limit]]


def _links(payload: Any) -> list[dict]:
    links = payload.get("delivery_links") if isinstance(payload, dict) else None
    return [link for link in links if isinstance(link, dict)] if isinstance(links, list) else []
