"""`process-email PATH [--dry-run]`: payload on stdout, decision on stderr, exit codes, the wired pipeline."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

from flask import Flask

from background.ingest import Ingest, IngestPolicy
from email_processing import cli
from email_processing.cli import process_email_command
from services.state_store_sqlite import SqliteStateStore
from settings import Settings

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
WITH_LINK = CORPUS / "synthetic" / "dropbox_scl_fi_notification.eml"
WITHOUT_LINK = CORPUS / "real" / "mailgun-flanker" / "no-ctype.eml"


class FakeService:
    """The wired service's face towards the command: the real ingest on a real SQLite store, a fake delivery."""

    def __init__(self, settings: Settings, store=None):
        self.settings = settings
        self.store = store
        self.offloader = SimpleNamespace(offload_links=self._offload)
        self.offloaded: list[str] = []
        self.delivered: list = []

    def _offload(self, email_id, links):
        from email_processing.orchestrator import OffloadedLink

        self.offloaded.append(email_id)
        return [OffloadedLink(link.provider, link.raw_url, link.direct_url, "https://r2.example/x", "x.zip")
                for link in links]

    def ingest_saved(self, parsed, received_at):
        policy = IngestPolicy.saved_email(self.settings.sender_allowlist, self.settings.allow_webhook_without_links)
        ingest = Ingest(self.store, policy, ("default",), offloader_factory=lambda: self.offloader)
        return ingest.ingest(parsed, received_at=received_at, attempt_now=True)

    def deliver_now(self, ingested):
        self.delivered.append(ingested.result)
        return {"outcome": "delivered", "status": 200}


def make_app(service: FakeService | None) -> Flask:
    app = Flask("test_cli")
    if service is not None:
        app.extensions["render_signal"] = service
    app.cli.add_command(process_email_command)
    return app


def invoke(app: Flask, *args: str):
    return app.test_cli_runner().invoke(args=["process-email", *args])


def test_dry_run_prints_the_payload_and_the_send_decision():
    service = FakeService(Settings())
    result = invoke(make_app(service), str(WITH_LINK), "--dry-run")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["subject"] == "Jane shared « Project Files.zip » with you"
    assert payload["delivery_links"][0]["r2_url"] is None          # no R2 in a dry run
    assert payload["received_at"] == "2025-06-03T08:00:00Z"        # from the Date header
    assert result.stderr == "decision: send\n"
    assert service.offloaded == [] and service.delivered == []


def test_dry_run_prints_the_payload_for_a_skip_too():
    result = invoke(make_app(FakeService(Settings())), str(WITHOUT_LINK), "--dry-run")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["delivery_links"] == []
    assert result.stderr == "decision: skip reason=no_delivery_links\n"


def test_dry_run_uses_the_configured_sender_allowlist():
    app = make_app(FakeService(Settings(sender_allowlist=("@elsewhere.example",))))
    result = invoke(app, str(WITH_LINK), "--dry-run")
    assert result.stderr == "decision: skip reason=sender_not_allowed\n"


def test_dry_run_prints_the_links_of_an_email_skipped_for_its_sender():
    app = make_app(FakeService(Settings(sender_allowlist=("@elsewhere.example",))))
    result = invoke(app, str(WITH_LINK), "--dry-run")
    assert result.stderr == "decision: skip reason=sender_not_allowed\n"
    assert [link["provider"] for link in json.loads(result.stdout)["delivery_links"]] == ["dropbox"]


def test_without_dry_run_an_email_skipped_for_its_sender_is_recorded_without_looking_for_links(tmp_path):
    service = FakeService(Settings(sender_allowlist=("@elsewhere.example",)), _store(tmp_path))
    result = invoke(make_app(service), str(WITH_LINK))
    assert (result.exit_code, service.delivered, service.offloaded) == (0, [], [])
    assert json.loads(result.stdout)["delivery_links"] == []       # the poller's path: sender filter first
    assert service.store.counters()["emails_skipped"] == {"sender_not_allowed": 1}


def test_without_the_app_extension_dry_run_reads_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("ALLOW_CUSTOM_WEBHOOK_WITHOUT_LINKS", "true")
    result = invoke(make_app(None), str(WITHOUT_LINK), "--dry-run")
    assert (result.exit_code, result.stderr) == (0, "decision: send\n")


def _store(tmp_path):
    return SqliteStateStore(str(tmp_path / "state.sqlite3"), retention_seconds=3600)


def test_without_dry_run_it_offloads_and_delivers_through_the_service(tmp_path):
    service = FakeService(Settings(), _store(tmp_path))
    result = invoke(make_app(service), str(WITH_LINK))
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["delivery_links"][0]["r2_url"] == "https://r2.example/x"
    assert len(service.offloaded) == 1
    assert [r.decision for r in service.delivered] == ["send"]
    assert result.stderr.splitlines() == ["decision: send", 'delivery: {"outcome": "delivered", "status": 200}']
    # queued as an item of mailbox default, attempted once, with no IMAP message behind it
    item = service.store.get_item(payload["event_id"])
    assert (item.mailbox_id, item.target_id, item.uid, item.attempts) == ("default", "default", 0, 1)


def test_without_dry_run_a_skip_is_recorded_and_not_delivered(tmp_path):
    service = FakeService(Settings(), _store(tmp_path))
    result = invoke(make_app(service), str(WITHOUT_LINK))
    assert (result.exit_code, service.delivered, service.offloaded) == (0, [], [])
    assert service.store.counters()["emails_skipped"] == {"no_delivery_links": 1}
    assert service.store.recent()[0]["outcome"] == "skipped: no_delivery_links"


def test_a_missing_file_exits_2_with_one_line(tmp_path):
    result = invoke(make_app(FakeService(Settings())), str(tmp_path / "nope.eml"), "--dry-run")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "cannot read" in result.stderr


def test_a_file_over_the_cap_exits_2(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "MAX_EML_BYTES", 1000)
    big = tmp_path / "big.eml"
    big.write_bytes(b"Subject: x\r\n\r\n" + b"a" * 2000)
    result = invoke(make_app(FakeService(Settings())), str(big), "--dry-run")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "too large" in result.stderr


def test_any_bytes_are_parsed_as_an_email(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    result = invoke(make_app(FakeService(Settings())), str(junk), "--dry-run")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["event_id"].startswith("msg_")


def test_dry_run_applies_the_configured_sender_authentication():
    # The notification has no Authentication-Results header from mx.example.org: its sender is not vouched for.
    settings = Settings(sender_allowlist=("jane@example.com",), sender_require_authenticated=True,
                        sender_authserv_id="mx.example.org")
    result = invoke(make_app(FakeService(settings)), str(WITH_LINK), "--dry-run")
    assert result.stderr == "decision: skip reason=sender_not_authenticated\n"
