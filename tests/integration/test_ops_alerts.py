"""Operational alerts end to end: the service's background (real Dovecot, both state backends; the OAuth2 case on
Dovecot's oauth2 passdb and the fake identity provider) evaluates, the outbox delivers to a real receiver at
OPS_WEBHOOK_URL, and each kind's event arrives once per streak, then one recovered, each with a valid Standard
Webhooks signature made with OPS_WEBHOOK_SECRET (the rules themselves: tests/unit/test_alert_rules.py)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from background import alerts
from harness.mail import event_id_of, make_email
from harness.pipeline import service_env
from services.oauth.stored_tokens import StoredRefreshTokens, TokenCipher
from services.state_store import ParkedEmail
from tests.integration.test_oauth_sign_in import start_refreshing_mailbox

pytestmark = pytest.mark.imap

OPS_SCHEMA = Draft202012Validator(json.loads((Path(__file__).resolve().parents[2] / "docs" / "ops-event.schema.json")
                                            .read_text(encoding="utf-8")))
OPS_SECRET = "whsec_c2VjcmV0LW9mLXRoZS1vcHMtcmVjZWl2ZXI="
QUIET_ROUNDS_SECONDS = 2.0  # several evaluation rounds after the last expected alert: nothing more may come


@pytest.fixture
def fast_alerts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounds every 0.2 s, a recovery after 0.5 s gone, dead letters "recent" for 3 s: the rule, shortened."""
    monkeypatch.setattr(alerts, "EVALUATE_INTERVAL_SECONDS", 0.2)
    monkeypatch.setattr(alerts, "RECOVER_AFTER_SECONDS", 0.5)
    monkeypatch.setattr(alerts, "DEAD_LETTER_WINDOW_SECONDS", 3.0)


@pytest.fixture
def ops_receiver(make_webhook_receiver):
    """The alert receiver: its bodies follow docs/ops-event.schema.json (checked here), not the email contract."""
    return make_webhook_receiver(contract=False)


def ops_env(imap_account, target, ops, state_backend) -> dict[str, str]:
    return service_env(imap_account, target, **state_backend, OPS_WEBHOOK_URL=ops.url,
                       OPS_WEBHOOK_SECRET=OPS_SECRET, OPS_WEBHOOK_ALLOW_INSECURE="true")


def alerts_received(ops) -> list[dict]:
    """Every alert the receiver accepted, each checked: signed with OPS_WEBHOOK_SECRET (and not with another
    secret), webhook-id equal to the body's event_id."""
    bodies = []
    for event in ops.events:
        if event["status_answered"] != 200:
            continue
        body = Webhook(OPS_SECRET).verify(event["body"], event["headers"])
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 32).verify(event["body"], event["headers"])
        assert event["headers"]["webhook-id"] == body["event_id"]
        OPS_SCHEMA.validate(body)
        bodies.append(body)
    return bodies


def wait_for_alerts(pipeline, ops, count: int, what: str) -> list[dict]:
    pipeline.wait_until(lambda: len(ops.delivered_ids()) >= count, timeout=20, what=what)
    return alerts_received(ops)


def test_a_dead_letter_is_announced_once_and_its_delivery_after_a_replay_once_as_recovered(
        state_backend, imap_account, webhook_receiver, ops_receiver, pipeline_factory, fast_alerts):
    # Given a target that refuses the email
    webhook_receiver.respond_with(400, b'{"error": "bad scenario"}')
    pipeline = pipeline_factory(ops_env(imap_account, webhook_receiver, ops_receiver, state_backend))
    raw = make_email()
    imap_account.server.append(imap_account.user, raw)
    # Then one signed dead_letter alert names the email, its target and the reason
    [dead] = wait_for_alerts(pipeline, ops_receiver, 1, "the dead_letter alert")
    item = pipeline.store.get_item(event_id_of(raw))
    assert (dead["kind"], dead["subject"], dead["count"]) == ("dead_letter", {"email": item.email_id}, 1)
    assert (dead["detail"]["event_ids"], dead["detail"]["targets"], dead["detail"]["reasons"]) == (
        [item.event_id], ["default"], ["http_400"])
    # When the receiver is fixed and the dead letter replayed and delivered
    webhook_receiver.respond_with(200, b"Accepted")
    assert pipeline.store.replay(item.event_id) == 1
    webhook_receiver.wait_for(1, timeout=15)
    # Then one recovered follows, and nothing more however many rounds pass
    received = wait_for_alerts(pipeline, ops_receiver, 2, "the recovered alert")
    time.sleep(QUIET_ROUNDS_SECONDS)
    received = alerts_received(ops_receiver)
    assert [(body["kind"], body["subject"]) for body in received] == [
        ("dead_letter", {"email": item.email_id}), ("recovered", {"email": item.email_id})]
    assert received[1]["detail"]["recovered_kind"] == "dead_letter"
    assert len(set(ops_receiver.delivered_ids())) == len(ops_receiver.delivered_ids()) == 2
    # The alerts are not emails: the recent emails list holds the one email only
    assert all(entry["event_id"] == item.event_id for entry in pipeline.store.recent(20))


def test_rising_dead_letters_make_the_target_failing_once_and_recovered_once_when_they_stop(
        state_backend, imap_account, webhook_receiver, ops_receiver, pipeline_factory, fast_alerts):
    webhook_receiver.respond_with(410, b"gone")
    pipeline = pipeline_factory(ops_env(imap_account, webhook_receiver, ops_receiver, state_backend))
    pipeline.wait_until(lambda: pipeline.store.get_record(alerts.STATE_NAMESPACE, alerts.STATE_KEY) is not None,
                        timeout=20, what="a first evaluation round (the dead-letter baseline)")
    for n in range(alerts.DEAD_LETTERS_RISING):
        imap_account.server.append(imap_account.user, make_email(subject=f"refused {n}"))
    # One target_failing and one dead_letter per email; once no new dead letter came for the window, one recovered
    expected = alerts.DEAD_LETTERS_RISING + 2
    wait_for_alerts(pipeline, ops_receiver, expected, "target_failing, the dead letters and the recovered")
    time.sleep(QUIET_ROUNDS_SECONDS)
    received = alerts_received(ops_receiver)
    kinds = Counter((body["kind"], json.dumps(body["subject"])) for body in received)
    target = json.dumps({"target": "default"})
    assert kinds[("target_failing", target)] == 1 and kinds[("recovered", target)] == 1
    assert sum(n for (kind, _), n in kinds.items() if kind == "dead_letter") == alerts.DEAD_LETTERS_RISING
    assert len(received) == expected
    failing = next(body for body in received if body["kind"] == "target_failing")
    assert failing["count"] >= alerts.DEAD_LETTERS_RISING and failing["detail"]["circuit_open"] is False


def test_a_parked_email_is_announced_once_and_recovers_once_when_it_is_unparked(
        state_backend, imap_account, webhook_receiver, ops_receiver, pipeline_factory, fast_alerts):
    pipeline = pipeline_factory(ops_env(imap_account, webhook_receiver, ops_receiver, state_backend))
    # Given an email the pipeline parked (recorded as the poller records one)
    pipeline.store.park(ParkedEmail("default:7:42", "default", "INBOX", 7, 42, "fetch_failed", email_id="e42",
                                    parked_at=time.time()))
    [parked] = wait_for_alerts(pipeline, ops_receiver, 1, "the email_parked alert")
    assert (parked["kind"], parked["subject"], parked["detail"]["parked_id"], parked["detail"]["reason"]) == (
        "email_parked", {"email": "e42"}, "default:7:42", "fetch_failed")
    # When it is unparked (a replay brought it to an end state)
    pipeline.store.unpark("default:7:42")
    wait_for_alerts(pipeline, ops_receiver, 2, "the recovered alert")
    time.sleep(QUIET_ROUNDS_SECONDS)
    assert [body["kind"] for body in alerts_received(ops_receiver)] == ["email_parked", "recovered"]


@pytest.mark.timeout(90)
def test_a_stalled_mailbox_is_announced_once_and_recovers_once_when_its_server_answers_again(
        state_backend, private_dovecot, webhook_receiver, ops_receiver, pipeline_factory, fast_alerts):
    account = private_dovecot.new_account()
    pipeline = pipeline_factory(ops_env(account, webhook_receiver, ops_receiver, state_backend))
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.snapshot().get("last_success_epoch"), timeout=20,
                        what="a first poller cycle")
    # Given a server that stops answering (SIGSTOP): no cycle completes, and after the stall limit the health
    # rules call the mailbox stalled
    private_dovecot.pause()
    try:
        [stalled] = wait_for_alerts(pipeline, ops_receiver, 1, "the mailbox_stalled alert")
    finally:
        private_dovecot.resume()
    assert (stalled["kind"], stalled["subject"], stalled["detail"]["state"]) == (
        "mailbox_stalled", {"mailbox": "default"}, "stalled")
    # When it answers again, one recovered, and nothing more
    wait_for_alerts(pipeline, ops_receiver, 2, "the recovered alert")
    time.sleep(QUIET_ROUNDS_SECONDS)
    received = alerts_received(ops_receiver)
    assert [(body["kind"], body["subject"]) for body in received] == [
        ("mailbox_stalled", {"mailbox": "default"}), ("recovered", {"mailbox": "default"})]


@pytest.mark.timeout(90)
def test_an_open_circuit_makes_the_target_failing_once_and_recovered_once_when_it_closes(
        state_backend, imap_account, webhook_receiver, ops_receiver, pipeline_factory, fast_alerts, monkeypatch):
    # A recovery needs the circuit closed for 2 s: its open/half-open cycle (3 s cooldown, a trial) is one streak
    monkeypatch.setattr(alerts, "RECOVER_AFTER_SECONDS", 2.0)
    webhook_receiver.respond_with(503, b"down for maintenance")
    pipeline = pipeline_factory(ops_env(imap_account, webhook_receiver, ops_receiver, state_backend))
    raw = make_email()
    imap_account.server.append(imap_account.user, raw)
    # Five retried failures in a row open the target's circuit: one target_failing alert says so
    [failing] = wait_for_alerts(pipeline, ops_receiver, 1, "the target_failing alert")
    assert (failing["kind"], failing["subject"], failing["detail"]["circuit_open"]) == (
        "target_failing", {"target": "default"}, True)
    # When the receiver answers again, the trial closes the circuit, the email is delivered, one recovered follows
    webhook_receiver.respond_with(200, b"Accepted")
    webhook_receiver.wait_for(1, timeout=20)
    wait_for_alerts(pipeline, ops_receiver, 2, "the recovered alert")
    time.sleep(QUIET_ROUNDS_SECONDS)
    received = alerts_received(ops_receiver)
    assert [(body["kind"], body["subject"]) for body in received] == [
        ("target_failing", {"target": "default"}), ("recovered", {"target": "default"})]
    assert pipeline.store.get_item(event_id_of(raw)).status == "delivered"


@pytest.mark.timeout(90)
def test_a_mailbox_whose_sign_in_needs_an_operator_is_announced_once_and_recovers_once_after_a_new_sign_in(
        make_oauth2_dovecot, webhook_receiver, ops_receiver, pipeline_factory, fast_alerts):
    pair, account, initial, pipeline = start_refreshing_mailbox(
        make_oauth2_dovecot, webhook_receiver, pipeline_factory, OAUTH_REAUTH_RETRY_SECONDS="600",
        OPS_WEBHOOK_URL=ops_receiver.url, OPS_WEBHOOK_SECRET=OPS_SECRET, OPS_WEBHOOK_ALLOW_INSECURE="true")
    pipeline.wait_until(lambda: pipeline.runtime.poller_status.snapshot()["imap"] == "ok", timeout=20,
                        what="signed in")
    # Given a grant the provider revoked: the mailbox needs an operator
    pair.identity.revoke(initial)
    [reauth] = wait_for_alerts(pipeline, ops_receiver, 1, "the reauth_required alert")
    assert (reauth["kind"], reauth["subject"]) == ("reauth_required", {"mailbox": "default"})
    # When the operator signs in again (a new refresh token stored, as oauth-login does)
    StoredRefreshTokens(pipeline.store, "default", TokenCipher(None)).save(
        pair.identity.issue_refresh_token(account.user))
    # Then one recovered, and nothing more
    wait_for_alerts(pipeline, ops_receiver, 2, "the recovered alert")
    time.sleep(QUIET_ROUNDS_SECONDS)
    assert [(body["kind"], body["subject"]) for body in alerts_received(ops_receiver)] == [
        ("reauth_required", {"mailbox": "default"}), ("recovered", {"mailbox": "default"})]
