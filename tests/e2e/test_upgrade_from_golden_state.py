"""The service started on the state the previous release wrote (tests/golden_state/): every pending item is
delivered once with its old event id, nothing delivered is sent again, dead letters stay dead, the checkpoint holds.

Issue 14 and later issues add migration steps; each one extends this test instead of writing its own. Step 2
(issue 14): outbox items name their mailbox and target; the old ones read as ``default``. Step 3 (issue 15): new
records (parked emails, fetch retries, identities, attempt logs) start empty; old items have an empty attempt log.
Step 5 (issue 17): an email ends with all its items (an old item, queued without the count, ends its email alone),
and each owner's items are claimed on their own (old items are adopted by their owner's claim).

Two generations of golden state: ``v0`` (the release before versioned state, schema 1) and ``v4`` (the release
before issue 17, schema 4, written by commit 539a03c's own generator: ``v4/MANIFEST.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from harness.pipeline import service_env
from harness.redis_server import RedisServer
from services.state_migrations import SCHEMA_VERSION
from services.state_store import dumps, open_state_store
from services.state_store_sqlite import DB_FILE_NAME
from settings import Settings

pytestmark = [pytest.mark.imap, pytest.mark.redis, pytest.mark.slow]

GOLDEN = Path(__file__).resolve().parents[1] / "golden_state"
GENERATIONS = {
    "v0": (GOLDEN / "v0.sqlite3", GOLDEN / "v0.redis.rdb", GOLDEN / "MANIFEST.json"),
    "v4": (GOLDEN / "v4" / "state.sqlite3", GOLDEN / "v4" / "dump.rdb", GOLDEN / "v4" / "MANIFEST.json"),
}


def _digest(body: bytes) -> str:
    return hashlib.sha256(dumps(json.loads(body)).encode("utf-8")).hexdigest()


@pytest.fixture(params=["v0", "v4"])
def generation(request) -> str:
    return request.param


@pytest.fixture
def MANIFEST(generation) -> dict:  # noqa: N802 - the manifest of the generation under test
    return json.loads(GENERATIONS[generation][2].read_text(encoding="utf-8"))


@pytest.fixture(params=["sqlite", "redis"])
def golden_env(request, generation, imap_account, webhook_receiver):
    # The fixtures were written with a 10-year retention; a long retry window keeps their pending items inside it,
    # so what this test sees is the upgrade, not the retry window running out.
    sqlite_file, redis_file, _ = GENERATIONS[generation]
    env = service_env(imap_account, webhook_receiver, STATE_RETENTION_DAYS="3650", WEBHOOK_RETRY_HOURS="720")
    if request.param == "sqlite":
        shutil.copyfile(sqlite_file, os.path.join(env["STATE_DIR"], DB_FILE_NAME))
        yield env
        return
    server = RedisServer(request.getfixturevalue("redis_binary"))
    shutil.copyfile(redis_file, os.path.join(server.dir, "dump.rdb"))
    try:
        server.start()
        yield {**env, "REDIS_URL": server.url}
    finally:
        server.stop()


@pytest.mark.timeout(120)
def test_the_previous_releases_pending_items_are_delivered_once_with_their_event_ids(golden_env, webhook_receiver,
                                                                                      service_factory, MANIFEST):
    pending = MANIFEST["outbox"]["pending"]
    due = {item["event_id"]: item for item in pending if item["next_attempt_at"] <= time.time()}
    later = [item for item in pending if item["next_attempt_at"] > time.time()]
    assert due and later  # the fixture holds both kinds
    # When the current code starts on that state
    service_factory(golden_env, workers=2)
    # Then every due item arrives once, with its old event id and the very body that was stored
    events = webhook_receiver.wait_for(len(due), timeout=40)
    time.sleep(1.5)  # a second copy would arrive within the claim interval
    events = webhook_receiver.delivered()
    assert sorted(event["headers"]["webhook-id"] for event in events) == sorted(due)
    for event in events:
        assert _digest(event["body"]) == due[event["headers"]["webhook-id"]]["payload_sha256"]
    # and nothing already delivered or dead is sent again; items scheduled later keep their schedule
    store = open_state_store(Settings.from_env(golden_env))
    try:
        for listed in MANIFEST["outbox"]["delivered"] + MANIFEST["outbox"]["dead"]:
            assert store.get_item(listed["event_id"]).status == listed["status"], listed["event_id"]
        for listed in later:
            item = store.get_item(listed["event_id"])
            assert (item.status, item.next_attempt_at) == ("pending", listed["next_attempt_at"])
        for item in due:
            assert store.get_item(item).status == "delivered", item
        # and the checkpoint of the old mailbox state holds
        for checkpoint in MANIFEST["checkpoints"]:
            assert store.get_checkpoint(checkpoint["mailbox"], checkpoint["uidvalidity"]) == checkpoint["last_uid"]
        # Migration step 2 (issue 14): the state is at the current schema version, and every old item belongs to
        # mailbox default and target default
        assert store.schema_version() == SCHEMA_VERSION
        for listed in pending + MANIFEST["outbox"]["delivered"] + MANIFEST["outbox"]["dead"]:
            item = store.get_item(listed["event_id"])
            assert (item.mailbox_id, item.target_id) == ("default", "default"), listed["event_id"]
        # Migration step 3 (issue 15): nothing parked, the delivered ones have the attempt of this run in their log
        assert store.parked_count() == 0
        for item in due:
            assert store.get_item(item).attempt_log[-1]["status"] == 200, item
        # Migration step 5 (issue 17): each old item ended its email alone: done, and its flag request queued
        for item in due:
            assert store.get_done(store.get_item(item).email_id) == "delivered", item
    finally:
        store.close()
