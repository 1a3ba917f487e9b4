"""The operator actions' pure parts (background/operator_actions.py): the sample webhook's body, the try-email dry
run (in the unit tier, where any socket or process is refused: so it provably touches no network), ``since``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from background.operator_actions import (
    MAX_EML_BYTES,
    BadRequest,
    DryRunPolicy,
    NotFound,
    OperatorSource,
    dry_run,
    parse_since,
    sample_payload,
)
from config import MailboxConfig, PasswordCredentials
from harness.contract import WebhookContractError, validate_webhook_body
from harness.mail import make_email
from services.webhook import _EVENT_ID

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "synthetic"
NOW = 1_796_000_000.0


def test_a_sample_payload_is_a_valid_webhook_body_marked_as_a_test():
    payload = sample_payload(NOW)
    validate_webhook_body(payload)
    assert payload["test"] is True
    assert payload["event_id"].startswith("test_") and _EVENT_ID.fullmatch(payload["event_id"])
    # Realistic: the builder's every field, links found in it, the subject saying it is a test
    assert {link["provider"] for link in payload["delivery_links"]} >= {"dropbox", "wetransfer"}
    assert "test" in payload["subject"] and payload["email_content"]


def test_each_sample_has_its_own_event_id():
    assert sample_payload(NOW)["event_id"] != sample_payload(NOW)["event_id"]


def test_the_schema_refuses_a_test_mark_on_an_email_event_id_and_a_test_event_id_without_the_mark():
    payload = sample_payload(NOW)
    email_like = {**payload, "event_id": "msg_" + "a" * 32}
    with pytest.raises(WebhookContractError):
        validate_webhook_body(email_like)
    unmarked = {key: value for key, value in payload.items() if key != "test"}
    with pytest.raises(WebhookContractError):
        validate_webhook_body(unmarked)
    with pytest.raises(WebhookContractError):
        validate_webhook_body({**payload, "test": False})


def test_a_dry_run_answers_the_payload_and_decision_of_process_email_dry_run():
    raw = (CORPUS / "dropbox_scl_fi_notification.eml").read_bytes()
    result = dry_run(raw, DryRunPolicy())
    assert result["decision"] == "send" and result["reason"] is None
    validate_webhook_body(result["payload"])
    assert result["event_id"] == result["payload"]["event_id"]
    assert result["payload"]["delivery_links"][0]["provider"] == "dropbox"


def test_a_dry_run_applies_the_mailboxs_sender_filter_and_still_lists_the_links():
    raw = make_email(sender="stranger@elsewhere.test")
    result = dry_run(raw, DryRunPolicy(mailbox_id="renders", sender_allowlist=("farm@studio.test",)))
    assert result["decision"] == "skip" and result["reason"] == "sender_not_allowed"
    assert result["mailbox"] == "renders" and result["payload"]["delivery_links"]


def test_a_dry_run_refuses_an_email_over_25_mib():
    with pytest.raises(BadRequest):
        dry_run(b"x" * (MAX_EML_BYTES + 1), DryRunPolicy())


def test_the_dry_run_policy_is_the_named_mailboxs_and_an_unknown_mailbox_is_not_found():
    mailbox = MailboxConfig(id="renders", server="imap.test", user="u@test", credentials=PasswordCredentials("pw"),
                            sender_allowlist=("farm@studio.test",), allow_without_links=True, max_links_per_email=7)
    source = OperatorSource(open_store=lambda: None, mailboxes=(mailbox,))
    assert source.dry_run_policy("renders") == DryRunPolicy("renders", ("farm@studio.test",), True, 7, None)
    assert source.dry_run_policy(None) == source.dry_run_policy("renders")
    with pytest.raises(NotFound):
        source.dry_run_policy("other")
    assert OperatorSource(open_store=lambda: None).dry_run_policy(None) == DryRunPolicy()


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-12-07T10:00:00Z", 1796637600.0),
    ("2026-12-07T11:00:00+01:00", 1796637600.0),
    ("2026-12-07T10:00:00", 1796637600.0),   # no offset: UTC
    (None, None),
    ("", None),
])
def test_since_is_iso_8601_and_naive_times_are_utc(text, expected):
    assert parse_since(text) == expected


@pytest.mark.parametrize("text", ["yesterday", 1796637600, "2026-13-01T00:00:00Z"])
def test_a_malformed_since_is_a_bad_request(text):
    with pytest.raises(BadRequest):
        parse_since(text)


def test_an_operator_source_never_shows_its_tokens():
    source = OperatorSource(open_store=lambda: None, admin_api_token="admin-Zr8-secret-token",
                            status_api_token="status-Q1-secret", session_secret="s" * 40)
    assert "secret" not in repr(source)
    assert json.dumps(repr(source)).count("s" * 40) == 0
