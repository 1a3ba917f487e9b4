"""A target an operator paused (issue 20): its webhooks stay pending, durably, and nothing is sent to it until it is
resumed; ``/api/status`` says it is paused and since when; ``/health`` does not count its waiting items as a stall
or a backlog. Real Dovecot, real receiver and both state backends for delivery; the real app on a real
redis-server for the status and health answers."""

from __future__ import annotations

import time

import pytest

from harness.mail import event_id_of, make_email
from harness.pipeline import service_env
from tests.integration.test_operator_routes import wait_for_health
from tests.integration.test_target_health import configured_app, enqueue_overdue, status, target_problems
from timestamps import iso_utc


@pytest.mark.imap
@pytest.mark.timeout(90)
def test_a_paused_target_gets_nothing_until_resumed_then_the_email_once(
        state_backend, imap_account, webhook_receiver, pipeline_factory):
    # Given the service running with its target paused
    pipeline = pipeline_factory(service_env(imap_account, webhook_receiver, **state_backend))
    assert pipeline.store.pause_target("default", time.time())
    # When an email arrives
    raw = make_email()
    imap_account.server.append(imap_account.user, raw)
    event_id = event_id_of(raw)
    pipeline.wait_until(lambda: pipeline.store.get_item(event_id) is not None, what="the email queued")
    time.sleep(2.0)   # many delivery cycles
    # Then nothing was sent and the item waits, pending, with no attempt counted
    assert webhook_receiver.events == []
    item = pipeline.store.get_item(event_id)
    assert (item.status, item.attempts, item.first_attempt_at) == ("pending", 0, None)
    # And once resumed the receiver gets it, once
    assert pipeline.store.resume_target("default")
    webhook_receiver.wait_for(1, timeout=20)
    pipeline.wait_until(lambda: pipeline.store.get_item(event_id).status == "delivered", what="delivered")
    time.sleep(0.5)
    assert webhook_receiver.delivered_ids() == [event_id]


def outbox_problems(body: dict) -> list[str]:
    return [p["state"] for p in body["problems"] if p["kind"] == "outbox"]


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_paused_targets_overdue_webhooks_are_no_problem_on_health_and_status_says_paused(
        make_app, redis_url, tmp_path):
    # Given target make paused with a webhook due 5 minutes ago, and archive with one due 10 s ago; nobody here
    # holds the mailbox, so nothing delivers
    app, runtime, holder = configured_app(make_app, redis_url, tmp_path)
    try:
        holder.publish({})
        store = runtime.store
        paused_at = time.time() - 400
        assert store.pause_target("make", paused_at)
        enqueue_overdue(store, "msg_make1_make", "make", 300)
        enqueue_overdue(store, "msg_arch1_archive", "archive", 10)
        # When this app's observer has read the store (a few observations)
        runtime.start_background()
        body = wait_for_health(app, lambda body: body["checks"]["cluster"] == "ok" and body["checks"]["outbox"] == "ok")
        time.sleep(1.5)
        body = app.test_client().get("/health").get_json()
        # Then neither the target nor the outbox is a problem
        assert (target_problems(body), outbox_problems(body), body["status"]) == ([], [], "ok")
        # And /api/status says which target is paused, and since when
        targets = {t["id"]: t for t in status(app)["targets"]}
        assert (targets["make"]["paused"], targets["make"]["paused_at"]) == (True, iso_utc(paused_at))
        assert (targets["archive"]["paused"], targets["archive"]["paused_at"]) == (False, None)
        assert targets["make"]["pending"] == 1
        # When it is resumed (and still nobody delivers), its overdue webhook is a stall again
        assert store.resume_target("make")
        body = wait_for_health(app, lambda body: target_problems(body))
        assert target_problems(body) == [("make", "stalled")]
        assert "stalled" in outbox_problems(body)
        assert status(app)["targets"][0]["paused"] is False
    finally:
        holder.release()
