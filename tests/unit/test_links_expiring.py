"""Pending webhooks whose links expire before their retry window ends are listed for the status page (issue 19)."""

from __future__ import annotations

from background.expiring import links_expiring
from services.state_store import OutboxItem

DAY = 86400.0


def item(event_id: str, target: str, created_at: float, *expiries: str | None) -> OutboxItem:
    links = [{"provider": "swisstransfer", "raw_url": "https://www.swisstransfer.com/d/x", "expires_at": at}
             for at in expiries]
    return OutboxItem(event_id, "e", {"delivery_links": links}, "default", 1, 1, None, created_at=created_at,
                      target_id=target)


def test_an_item_whose_link_expires_inside_its_retry_window_is_listed_soonest_first():
    created = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    items = [item("msg_late", "make", created, "2023-11-15T10:00:00Z"),       # within 24 h: listed
             item("msg_safe", "make", created, "2023-11-20T00:00:00Z"),       # after the window
             item("msg_none", "make", created, None),                         # no expiry known
             item("msg_soon", "n8n", created, "2023-11-16T00:00:00Z", "2023-11-15T01:00:00Z"),
             item("msg_gone", "removed", created, "2023-11-15T00:00:00Z")]    # unknown target: not judged
    hours = {"make": 24.0, "n8n": 72.0}
    listed = links_expiring(items, hours.get)
    assert [entry["event_id"] for entry in listed] == ["msg_soon", "msg_late"]
    assert listed[0] == {"event_id": "msg_soon", "target": "n8n", "expires_at": "2023-11-15T01:00:00Z",
                         "retry_until": "2023-11-17T22:13:20Z"}


def test_a_body_without_links_or_with_unreadable_ones_is_not_listed():
    odd = OutboxItem("msg_odd", "e", {"delivery_links": "nope"}, "default", 1, 1, None, created_at=0.0)
    assert links_expiring([odd, item("msg_bad", "default", 0.0, "not a date")], lambda _: 24.0) == []
