"""Schema versions and migration steps (issue 14): steps in order, additive, and applied to an old SQLite file."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from services.state_migrations import (
    FIRST_VERSION,
    SCHEMA_VERSION,
    STEPS,
    SchemaTooNew,
    check_readable,
    steps_after,
)
from services.state_store import StateStoreError
from services.state_store_sqlite import SqliteStateStore

GOLDEN_SQLITE = Path(__file__).resolve().parents[1] / "golden_state" / "v0.sqlite3"
V1_INSERT = (  # what the previous release's enqueue runs: it must keep working on migrated state
    "INSERT INTO outbox (event_id, email_id, payload, mailbox, uidvalidity, uid, message_id, status, attempts, "
    "next_attempt_at, created_at, first_attempt_at, last_error, last_status, in_flight, due_at, pending_since) "
    "VALUES ('msg_old', 'old', '{}', 'INBOX', 1, 2, NULL, 'pending', 0, 0, 0, NULL, NULL, NULL, 0, 0, 0)")


def test_steps_run_from_the_first_version_to_the_current_one_in_order():
    assert [step.version for step in STEPS] == list(range(FIRST_VERSION + 1, SCHEMA_VERSION + 1))
    assert steps_after(SCHEMA_VERSION) == ()
    assert steps_after(FIRST_VERSION) == STEPS


@pytest.mark.parametrize("statement", [s for step in STEPS for s in step.sqlite])
def test_every_sqlite_step_is_additive(statement):
    words = statement.upper().split()
    if words[:2] == ["ALTER", "TABLE"]:
        assert words[3:5] == ["ADD", "COLUMN"], statement
        # an old release's INSERT does not name the column: NOT NULL needs a default
        assert "NOT NULL" not in statement.upper() or "DEFAULT" in words, statement
    else:
        assert words[:2] in (["CREATE", "TABLE"], ["CREATE", "INDEX"]) and "IF NOT EXISTS" in statement.upper(), \
            statement


def test_state_from_a_newer_release_is_refused_only_when_it_says_so():
    check_readable(SCHEMA_VERSION + 3, 1)  # newer, additive: readable
    with pytest.raises(SchemaTooNew):
        check_readable(SCHEMA_VERSION + 3, SCHEMA_VERSION + 1)


def _copy_golden(tmp_path: Path) -> str:
    path = tmp_path / "state.sqlite3"
    shutil.copyfile(GOLDEN_SQLITE, path)
    return str(path)


def _meta(path: str) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def test_the_previous_releases_sqlite_file_is_migrated_and_its_items_read_as_default(tmp_path):
    path = _copy_golden(tmp_path)
    assert _meta(path)["schema_version"] == "1"
    store = SqliteStateStore(path, retention_seconds=3650 * 86400)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        items = store.list_items("pending") + store.list_items("delivered") + store.list_items("dead")
        assert items and all((item.mailbox_id, item.target_id) == ("default", "default") for item in items)
    finally:
        store.close()
    assert _meta(path) == {"schema_version": str(SCHEMA_VERSION), "oldest_reader": "1"}
    # Opening it again changes nothing, and the previous release's writes still work on it
    SqliteStateStore(path, retention_seconds=86400).close()
    with sqlite3.connect(path) as conn:
        conn.execute(V1_INSERT)
    store = SqliteStateStore(path, retention_seconds=86400)
    try:
        assert store.get_item("msg_old").target_id == "default"
    finally:
        store.close()


def test_a_file_a_newer_release_marked_unreadable_is_refused(tmp_path):
    path = str(tmp_path / "state.sqlite3")
    SqliteStateStore(path, retention_seconds=86400).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'oldest_reader'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StateStoreError, match="readable from version"):
        SqliteStateStore(path, retention_seconds=86400)
