"""The golden v0 state fixtures (tests/golden_state/) are real store files that this release's stores read back
exactly as MANIFEST.json describes, so the state-migration upgrade test can start from them and trust the manifest.

Each backend opens a copy: SQLite from a temporary STATE_DIR, Redis from a redis-server whose ``--dir`` holds the
dump as ``dump.rdb`` (loaded at start; the server saves nothing and is stopped by PID).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Iterator

import pytest

from harness.redis_server import RedisServer
from services.state_store import OutboxItem, StateStore, dumps, open_state_store
from services.state_store_sqlite import DB_FILE_NAME
from settings import Settings

pytestmark = pytest.mark.redis

FIXTURES = Path(__file__).resolve().parents[1] / "golden_state"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text(encoding="utf-8"))
ITEM_FIELDS = [f.name for f in fields(OutboxItem) if f.name != "payload"]
# Fields later schema versions added: the fixtures predate them, and an old item reads them as these values.
ADDED_FIELDS: dict[str, object] = {"mailbox_id": "default", "target_id": "default", "attempt_log": [],
                                   "held_until": None}
T0 = MANIFEST["clock"]["T0"]


def _settings(**environ: str) -> Settings:
    return Settings.from_env({"STATE_RETENTION_DAYS": str(MANIFEST["read_with"]["STATE_RETENTION_DAYS"]), **environ})


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def golden(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StateStore]:
    if request.param == "sqlite":
        state_dir = tmp_path_factory.mktemp("golden-sqlite")
        shutil.copyfile(FIXTURES / "v0.sqlite3", state_dir / DB_FILE_NAME)
        store = open_state_store(_settings(STATE_DIR=str(state_dir)))
        yield store
        store.close()
        return
    server = RedisServer(request.getfixturevalue("redis_binary"))
    shutil.copyfile(FIXTURES / "v0.redis.rdb", os.path.join(server.dir, "dump.rdb"))
    try:
        server.start()
        store = open_state_store(_settings(REDIS_URL=server.url))
        yield store
        store.close()
    finally:
        server.stop()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_fixture_files_are_the_ones_the_manifest_was_written_from() -> None:
    for name, facts in MANIFEST["files"].items():
        data = (FIXTURES / name).read_bytes()
        assert (len(data), _sha256(data)) == (facts["bytes"], facts["sha256"]), name
    assert (FIXTURES / "v0.redis.rdb").read_bytes()[:9].decode() == MANIFEST["files"]["v0.redis.rdb"]["rdb_format"]


def test_the_outbox_reads_back_with_the_listed_ids_fields_and_payloads(golden: StateStore) -> None:
    for status, expected in MANIFEST["outbox"].items():
        items = golden.list_items(status, 1000)
        assert [item.event_id for item in items] == MANIFEST["event_ids"][status], status
        for item, listed in zip(items, expected, strict=True):
            assert {name: getattr(item, name) for name in ITEM_FIELDS} == {
                name: listed[name] if name in listed else ADDED_FIELDS[name] for name in ITEM_FIELDS}, item.event_id
            assert _sha256(dumps(item.payload).encode("utf-8")) == listed["payload_sha256"], item.event_id
            assert item.payload.get("subject") == listed["subject"]
    stats = golden.outbox_stats(T0 + 1000)
    stats.pop("oldest_pending_age_s")
    # Added by issue 15 (the outbox stall rule): the oldest due item at T0 + 1000, and its delay (no attempt log)
    oldest_due = (stats.pop("oldest_due_at"), stats.pop("oldest_due_delay"))
    assert stats.pop("enriching") == 0   # added by issue 16: a v1 store has no item waiting for R2 copies
    assert stats.pop("held") == 0        # added by issue 17: nothing is held outside a delivery window
    assert stats == MANIFEST["outbox_stats_at_T0_plus_1000"]
    # (a claimed item is due when its claim lapses)
    due_at = [item.get("claimed_until") or item["next_attempt_at"] for item in MANIFEST["outbox"]["pending"]]
    due = [moment for moment in due_at if moment <= T0 + 1000]
    assert oldest_due == (min(due), 0.0)
    assert [len(MANIFEST["event_ids"][s]) for s in ("pending", "delivered", "dead")] == [5, 2, 3]


def test_every_listed_email_has_its_done_record_and_its_item(golden: StateStore) -> None:
    assert {email_id: golden.get_done(email_id) for email_id in MANIFEST["done"]} == MANIFEST["done"]
    status_of = {event_id: status for status, ids in MANIFEST["event_ids"].items() for event_id in ids}
    for email in MANIFEST["emails"]:
        item = golden.get_item(email["event_id"])
        if email["role"].startswith("skipped"):
            assert item is None, email["role"]
        else:
            assert item is not None and item.status == status_of[email["event_id"]], email["role"]
            assert _sha256(dumps(item.payload).encode("utf-8")) == email["payload_sha256"]


def test_checkpoint_and_flag_requests_read_back_as_listed(golden: StateStore) -> None:
    for checkpoint in MANIFEST["checkpoints"]:
        assert golden.get_checkpoint(checkpoint["mailbox"], checkpoint["uidvalidity"]) == checkpoint["last_uid"]
    assert golden.has_any_checkpoint(MANIFEST["mailbox"]) is MANIFEST["has_any_checkpoint"]
    flags = [{"mailbox": r.mailbox, "uidvalidity": r.uidvalidity, "uid": r.uid, "message_id": r.message_id}
             for r in golden.pending_flags(MANIFEST["mailbox"], 1000)]
    assert flags == MANIFEST["flag_requests"]


def test_counters_history_r2_copies_and_status_read_back_as_listed(golden: StateStore) -> None:
    assert golden.counters() == MANIFEST["counters"]
    assert [{k: v for k, v in entry.items() if k != "at"} for entry in golden.recent(100)] == MANIFEST["recent"]
    for copy in MANIFEST["r2_copies"]:
        assert golden.get_r2_copy(copy["source_url"]) == copy["record"]
    status = golden.read_status()
    assert status is not None
    status.pop("published_at")
    assert status == MANIFEST["status"]
