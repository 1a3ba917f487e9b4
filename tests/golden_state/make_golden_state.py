"""Golden state fixtures written by the v0 state store API (this release), for the state-migration upgrade test.

Targets the v0 store API: ``services/state_store.py``, ``services/state_store_sqlite.py`` and
``services/state_store_redis.py`` as of the commit recorded in ``MANIFEST.json`` (Redis key prefix
``render_signal:v1:``, SQLite ``meta.schema_version = '1'``; "v0" names the release, before state carried a version
of its own). Kept for the record, not re-run by CI: the next release changes that API, and the fixtures are only
worth anything if they stay exactly what this release wrote. Run from the repository root, on the v0 code:

    ./.venv/bin/python -m tests.golden_state.make_golden_state

It plays one mailbox history through the stores' own methods, the way the poller and the delivery loop call them
(payloads from corpus emails through ``process_email``), once on a SQLite file and once on a real redis-server
(loopback, free port, own ``--dir``, stopped by PID), then writes ``v0.sqlite3``, ``v0.redis.rdb`` and
``MANIFEST.json`` beside this file. Before writing the manifest it reopens both files with fresh stores and checks
that both read back the same state and the state the history was meant to produce.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any

from background.ingest import recent_entry
from background.runner import InstanceInfo, PollerStatus
from email_processing.orchestrator import NullOffloader, OffloadedLink, process_email
from email_processing.parsing import parse_message
from email_processing.payload import email_id_for, event_id_for, format_received_at
from harness.redis_server import RedisServer
from services.r2_offload import object_key_for
from services.redis_client import make_redis_client
from services.state_store import OutboxItem, StateStore, dumps
from services.state_store_redis import RedisStateStore
from services.state_store_sqlite import DB_FILE_NAME, SqliteStateStore
from settings import Settings
from timestamps import iso_utc

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(REPO, "tests", "corpus", "synthetic")
SQLITE_FIXTURE = "v0.sqlite3"
REDIS_FIXTURE = "v0.redis.rdb"

# Fixed clock for every time the store lets the caller give (claims, outcomes, replays, created_at): the fixtures
# then hold the same values on both backends. T0 lies before the generation, so "due at T0" is due whenever read.
T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()
# A retry scheduled this far ahead is still in the future whenever the upgrade test runs.
FUTURE_RETRY_AT = datetime(2100, 1, 1, tzinfo=timezone.utc).timestamp()
# The longest STATE_RETENTION_DAYS settings accept: delivered/dead items, done records, flags and history written
# with it outlive the fixture's use (Redis stores the TTLs; SQLite stores expires_at).
RETENTION_DAYS = 3650
RETENTION_SECONDS = RETENTION_DAYS * 86400.0
STATUS_TTL_SECONDS = RETENTION_SECONDS   # the service uses ~lease TTL; a real one would be gone before any test
R2_TTL_SECONDS = RETENTION_SECONDS

MAILBOX = "INBOX"
UIDVALIDITY = 1733011200
LAST_UID = 42
CLAIM_SECONDS = 40.0
WORKER = "golden-host:4242:0f3c9a7e"   # a lease token, as the delivery loop passes it to claim_due
R2_PUBLIC_BASE = "https://files.render-signal.example"


@dataclass(frozen=True)
class Email:
    uid: int
    corpus: str                 # file in tests/corpus/synthetic
    role: str                   # what happens to it in the history below
    drop_message_id: bool = False


EMAILS = (
    Email(31, "wetransfer_notification.eml", "delivered_flag_applied"),
    Email(32, "swisstransfer_links.eml", "delivered_without_message_id", drop_message_id=True),
    Email(33, "dropbox_scl_fi_notification.eml", "dead_http_400"),
    Email(34, "fromsmash_links.eml", "pending_retrying"),
    Email(35, "dropbox_scl_fo_folder.eml", "dead_retries_exhausted"),
    Email(36, "google_redirect.eml", "pending_replayed_from_dead"),
    Email(37, "safelinks_outlook.eml", "pending_in_flight_claim_lapsed"),
    Email(38, "mislabelled_charset.eml", "dead_parse_failed_parked"),
    Email(39, "lookalike_hosts.eml", "skipped_no_delivery_links"),
    Email(40, "qp_soft_breaks.eml", "skipped_sender_not_allowed"),
    Email(41, "dropbox_s_and_request.eml", "pending_due_with_r2_copies"),
    Email(42, "punctuation_around_urls.eml", "pending_due"),
)


@dataclass
class Prepared:
    email: Email
    subject: str
    message_id: str | None
    email_id: str
    event_id: str
    decision: str
    reason: str | None
    payload: dict
    html_truncated: bool
    r2_copies: list[tuple[str, dict]]


class _R2Offloader:
    """Stands in for the Worker: every link copied, records shaped as R2Offloader keeps them."""

    def __init__(self) -> None:
        self.copies: list[tuple[str, dict]] = []

    def offload_links(self, email_id: str, links: list) -> list[OffloadedLink]:
        out = []
        for link in links:
            key = object_key_for(link.provider, link.direct_url)
            name = key.rsplit("/", 1)[1]
            record = {"r2_url": f"{R2_PUBLIC_BASE}/{key}", "object_key": key, "original_filename": name}
            self.copies.append((link.direct_url, record))
            out.append(OffloadedLink(link.provider, link.raw_url, link.direct_url, record["r2_url"], name))
        return out


def _raw(email: Email) -> bytes:
    with open(os.path.join(CORPUS, email.corpus), "rb") as handle:
        raw = handle.read()
    if email.drop_message_id:
        raw = b"".join(line for line in raw.splitlines(keepends=True) if not line.lower().startswith(b"message-id:"))
    return raw


def prepare(email: Email) -> Prepared:
    parsed = parse_message(_raw(email))
    received_at = format_received_at(datetime.fromtimestamp(T0 - 3600 + email.uid, tz=timezone.utc))
    allowlist = ("@render-signal.example",) if email.role == "skipped_sender_not_allowed" else ()
    offloader: Any = _R2Offloader() if email.role == "pending_due_with_r2_copies" else NullOffloader()
    result = process_email(parsed, received_at=received_at, sender_allowlist=allowlist, allow_without_links=False,
                           offloader=offloader)
    email_id = email_id_for(parsed)
    payload = result.payload
    if email.role == "dead_parse_failed_parked":
        payload = {"event_id": event_id_for(email_id), "subject": parsed.subject}   # what poller._park stores
    return Prepared(email, parsed.subject, parsed.message_id, email_id, event_id_for(email_id), result.decision,
                    result.reason, payload, parsed.html_truncated, getattr(offloader, "copies", []))


# --- the history -------------------------------------------------------------------------------------------------

def populate(store: StateStore, emails: list[Prepared], status_doc: dict) -> None:
    """One mailbox's history, in order, through the store API only (as poller.py and delivery.py call it)."""
    by_role = {p.email.role: p for p in emails}

    def seen(p: Prepared) -> None:
        store.incr("emails_seen")
        if p.html_truncated:
            store.incr("html_truncations")

    def enqueue(p: Prepared, at: float) -> None:
        seen(p)
        item = OutboxItem(event_id=p.event_id, email_id=p.email_id, payload=p.payload, mailbox=MAILBOX,
                          uidvalidity=UIDVALIDITY, uid=p.email.uid, message_id=p.message_id, created_at=at,
                          next_attempt_at=at)
        assert store.enqueue(item), p.event_id
        store.incr("emails_processed")
        for url, record in p.r2_copies:
            store.put_r2_copy(url, record, R2_TTL_SECONDS)
            store.incr("r2_success")
        time.sleep(0.002)  # distinct wall-clock pending_since, so the pending order is the enqueue order

    def claim(p: Prepared, now: float) -> None:
        claimed = store.claim_due(WORKER, now, 10, CLAIM_SECONDS)
        assert [i.event_id for i in claimed] == [p.event_id], (p.email.role, [i.event_id for i in claimed])

    def delivered(p: Prepared, status: int, at: float) -> None:
        assert store.mark_delivered(p.event_id, status, at)
        store.record_recent(recent_entry(p.payload, "delivered"))

    def dead(p: Prepared, reason: str, status: int | None, excerpt: str | None, at: float) -> None:
        assert store.dead_letter(p.event_id, reason, status, excerpt, now=at)
        store.record_recent(recent_entry(p.payload, f"dead letter: {reason}"))

    def skipped(p: Prepared) -> None:
        seen(p)
        assert p.decision == "skip", p.email.role
        store.mark_done(p.email_id, f"skipped:{p.reason}")
        store.incr("emails_skipped", label=p.reason)
        store.queue_flag(MAILBOX, UIDVALIDITY, p.email.uid, p.message_id)
        store.record_recent(recent_entry(p.payload, f"skipped: {p.reason}"))

    p = by_role["delivered_flag_applied"]
    enqueue(p, T0)
    claim(p, T0)
    delivered(p, 200, T0 + 1)
    [flag] = store.pending_flags(MAILBOX, 10)
    store.clear_flag(flag)   # the poller applied this one on the server

    p = by_role["delivered_without_message_id"]
    enqueue(p, T0 + 10)
    claim(p, T0 + 10)
    delivered(p, 202, T0 + 12)

    p = by_role["dead_http_400"]
    enqueue(p, T0 + 20)
    claim(p, T0 + 20)
    dead(p, "http_400", 400, '{"error":"invalid payload: missing field delivery_links[0].url"}', T0 + 21)

    retrying = by_role["pending_retrying"]
    enqueue(retrying, T0 + 30)
    claim(retrying, T0 + 30)
    assert store.reschedule(retrying.event_id, T0 + 90, "HTTP 503", 503)

    p = by_role["dead_retries_exhausted"]
    enqueue(p, T0 + 40)
    claim(p, T0 + 40)
    assert store.reschedule(p.event_id, T0 + 60, "HTTP 502", 502)
    claim(p, T0 + 60)
    dead(p, "retries_exhausted", 502, "<html><body>502 Bad Gateway</body></html>", T0 + 61)

    claim(retrying, T0 + 90)
    assert store.reschedule(retrying.event_id, FUTURE_RETRY_AT, "ConnectionError: connection refused", None)

    replayed = by_role["pending_replayed_from_dead"]
    enqueue(replayed, T0 + 100)
    claim(replayed, T0 + 100)
    dead(replayed, "http_404", 404, "Not Found", T0 + 101)

    p = by_role["pending_in_flight_claim_lapsed"]
    enqueue(p, T0 + 110)
    claim(p, T0 + 110)   # its worker died here: no outcome recorded, the claim lapses at T0 + 150

    p = by_role["dead_parse_failed_parked"]
    seen(p)
    store.incr("parse_failures")
    parked = OutboxItem(event_id=p.event_id, email_id=p.email_id, payload=p.payload, mailbox=MAILBOX,
                        uidvalidity=UIDVALIDITY, uid=p.email.uid, message_id=p.message_id, created_at=T0 + 115,
                        next_attempt_at=T0 + 115 + 10 ** 9)
    assert store.enqueue(parked)
    assert store.dead_letter(p.event_id, "parse_failed", None, "parse_failed: UnicodeDecodeError", now=T0 + 120)

    skipped(by_role["skipped_no_delivery_links"])
    skipped(by_role["skipped_sender_not_allowed"])

    assert store.replay(replayed.event_id, now=T0 + 200) == 1   # an operator replayed the 404

    enqueue(by_role["pending_due_with_r2_copies"], T0 + 300)
    enqueue(by_role["pending_due"], T0 + 310)

    store.set_checkpoint(MAILBOX, UIDVALIDITY, LAST_UID)
    store.publish_status(status_doc, ttl_seconds=STATUS_TTL_SECONDS)


def status_document() -> dict:
    """Shaped like StatusObserver.status_document(): lease snapshot, poller status, instance."""
    poller = PollerStatus(state="polling", imap="ok", mailbox=MAILBOX, uidvalidity=UIDVALIDITY, last_uid=LAST_UID,
                          idle=True, last_cycle_at=T0 + 310, last_success_at=T0 + 311)
    lease = {"backend": "redis", "holder": WORKER, "acquired_at": iso_utc(T0 - 600), "expires_in_s": 27.5,
             "renewals": 61, "losses": 0, "state": "held"}
    instance = InstanceInfo("golden-host", 4242, T0 - 600, "1.0.0", worker=0).as_dict()
    instance["uptime_s"] = 911.0
    return {"lease": lease, "poller": poller.snapshot(), "instance": instance}


# --- reading back ------------------------------------------------------------------------------------------------

_ITEM_FIELDS = [f.name for f in fields(OutboxItem) if f.name != "payload"]


def payload_sha256(payload: dict) -> str:
    return hashlib.sha256(dumps(payload).encode("utf-8")).hexdigest()


def observe(store: StateStore, emails: list[Prepared]) -> dict:
    """Everything the fixtures should answer through the v0 API, without wall-clock values."""
    outbox = {}
    for status in ("pending", "delivered", "dead"):
        outbox[status] = [{**{name: getattr(item, name) for name in _ITEM_FIELDS},
                           "subject": item.payload.get("subject"), "payload_sha256": payload_sha256(item.payload)}
                          for item in store.list_items(status, 1000)]
    status = store.read_status()
    stats = store.outbox_stats(T0 + 1000)
    stats.pop("oldest_pending_age_s")
    copies = [(url, store.get_r2_copy(url)) for p in emails for url, _ in p.r2_copies]
    return {
        "outbox": outbox,
        "outbox_stats_at_T0_plus_1000": stats,
        "checkpoints": [{"mailbox": MAILBOX, "uidvalidity": UIDVALIDITY,
                         "last_uid": store.get_checkpoint(MAILBOX, UIDVALIDITY)}],
        "has_any_checkpoint": store.has_any_checkpoint(MAILBOX),
        "done": {p.email_id: store.get_done(p.email_id) for p in emails},
        "flag_requests": [{"mailbox": r.mailbox, "uidvalidity": r.uidvalidity, "uid": r.uid,
                           "message_id": r.message_id} for r in store.pending_flags(MAILBOX, 1000)],
        "counters": store.counters(),
        "recent": [{k: v for k, v in entry.items() if k != "at"} for entry in store.recent(100)],
        "r2_copies": [{"source_url": url, "record": record} for url, record in copies],
        "status": None if status is None else {k: v for k, v in status.items() if k != "published_at"},
    }


def check_intent(seen: dict, emails: list[Prepared]) -> None:
    """The read-back state is the one the history meant: each email's status, and the two pending specials."""
    status_of = {item["event_id"]: status for status, items in seen["outbox"].items() for item in items}
    for p in emails:
        role = p.email.role
        if role.startswith("skipped"):
            assert p.event_id not in status_of and seen["done"][p.email_id] == f"skipped:{p.reason}", role
        else:
            assert status_of[p.event_id] == role.split("_")[0], (role, status_of.get(p.event_id))
    pending = {item["event_id"]: item for item in seen["outbox"]["pending"]}
    by_role = {p.email.role: p for p in emails}
    retrying = pending[by_role["pending_retrying"].event_id]
    assert retrying["attempts"] == 2 and retrying["next_attempt_at"] == FUTURE_RETRY_AT
    assert pending[by_role["pending_due"].event_id]["next_attempt_at"] <= time.time()
    assert pending[by_role["pending_in_flight_claim_lapsed"].event_id]["in_flight"] is True
    assert seen["checkpoints"][0]["last_uid"] == LAST_UID
    assert len(seen["flag_requests"]) == 7 and seen["status"] is not None and len(seen["r2_copies"]) == 2


# --- the two backends --------------------------------------------------------------------------------------------

def write_sqlite(work: str, emails: list[Prepared], status_doc: dict) -> str:
    path = os.path.join(work, "state", DB_FILE_NAME)   # the name the service uses under STATE_DIR
    store = SqliteStateStore(path, retention_seconds=RETENTION_SECONDS)
    try:
        populate(store, emails, status_doc)
    finally:
        store.close()
    # WAL mode: fold the log into the main file so the one file is complete, then check nothing is left beside it.
    conn = sqlite3.connect(path)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0, "checkpoint blocked"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    wal = path + "-wal"
    assert not os.path.exists(wal) or os.path.getsize(wal) == 0, "WAL not empty after checkpoint"
    target = os.path.join(HERE, SQLITE_FIXTURE)
    shutil.copyfile(path, target)
    return target


def _redis_store(server: RedisServer) -> RedisStateStore:
    client = make_redis_client(Settings.from_env({"REDIS_URL": server.url}))
    return RedisStateStore(client, retention_seconds=RETENTION_SECONDS, owns_client=True)


def write_redis(binary: str, emails: list[Prepared], status_doc: dict) -> str:
    server = RedisServer(binary).start()
    try:
        store = _redis_store(server)
        try:
            populate(store, emails, status_doc)
            store._client.save()  # noqa: SLF001 - SAVE on the store's own connection: the dump holds what it wrote
        finally:
            store.close()
        target = os.path.join(HERE, REDIS_FIXTURE)
        shutil.copyfile(os.path.join(server.dir, "dump.rdb"), target)
        return target
    finally:
        server.stop()


def read_sqlite(work: str, emails: list[Prepared]) -> dict:
    state_dir = os.path.join(work, "reread-sqlite")
    os.makedirs(state_dir)
    shutil.copyfile(os.path.join(HERE, SQLITE_FIXTURE), os.path.join(state_dir, DB_FILE_NAME))
    store = SqliteStateStore(os.path.join(state_dir, DB_FILE_NAME), retention_seconds=RETENTION_SECONDS)
    try:
        return observe(store, emails)
    finally:
        store.close()


def read_redis(binary: str, emails: list[Prepared]) -> dict:
    server = RedisServer(binary)
    shutil.copyfile(os.path.join(HERE, REDIS_FIXTURE), os.path.join(server.dir, "dump.rdb"))
    server.start()
    try:
        store = _redis_store(server)
        try:
            return observe(store, emails)
        finally:
            store.close()
    finally:
        server.stop()


# --- manifest ----------------------------------------------------------------------------------------------------

def _run(*args: str) -> str:
    try:
        return subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _file_facts(path: str) -> dict:
    with open(path, "rb") as handle:
        data = handle.read()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def manifest(seen: dict, emails: list[Prepared], redis_version: str) -> dict:
    code = _run("git", "log", "-1", "--format=%H", "--", "services/state_store.py", "services/state_store_sqlite.py",
                "services/state_store_redis.py")
    sqlite_facts = _file_facts(os.path.join(HERE, SQLITE_FIXTURE))
    with open(os.path.join(HERE, SQLITE_FIXTURE), "rb") as handle:
        header = handle.read(100)
    sqlite_facts.update({"store_file_name": DB_FILE_NAME, "meta_schema_version": "1",
                         "journal_mode": "wal" if header[18:20] == b"\x02\x02" else "rollback",
                         "wal_checkpointed": True, "sqlite_library_version": sqlite3.sqlite_version})
    redis_facts = _file_facts(os.path.join(HERE, REDIS_FIXTURE))
    with open(os.path.join(HERE, REDIS_FIXTURE), "rb") as handle:
        magic = handle.read(9).decode("ascii")   # "REDIS" + 4-digit RDB format version
    redis_facts.update({"key_prefix": "render_signal:v1:", "db": 0, "redis_server_version": redis_version,
                        "rdb_format": magic})
    return {
        "what": "State written by the v0 state store API (this release) through its own methods; both files hold "
                "the same logical state. See README.md.",
        "produced": {"head_commit": _run("git", "rev-parse", "HEAD"), "state_store_code_commit": code,
                     "generator": "tests/golden_state/make_golden_state.py",
                     "command": "./.venv/bin/python -m tests.golden_state.make_golden_state",
                     "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
        "files": {SQLITE_FIXTURE: sqlite_facts, REDIS_FIXTURE: redis_facts},
        "read_with": {"retention_seconds": RETENTION_SECONDS, "STATE_RETENTION_DAYS": RETENTION_DAYS,
                      "note": "written with this retention: delivered/dead items, done records, flags and history "
                              "(and, here, the status document and R2 records) live until about produced.at + "
                              "3650 days; outbox_stats and recent() filter by the READER's retention, so read "
                              "with STATE_RETENTION_DAYS=3650."},
        "clock": {"T0": T0, "T0_iso": iso_utc(T0), "future_retry_at": FUTURE_RETRY_AT,
                  "note": "claims, outcomes, replay and created_at use T0 + n (exact floats below); pending_since, "
                          "done-record expiry, skip flag requests, history 'at' and published_at are the wall "
                          "clock at generation and are not listed."},
        "payload_sha256": "sha256 of json.dumps(payload, separators=(',', ':'), sort_keys=True) (ensure_ascii on), "
                          "UTF-8 - the form services.state_store.dumps stores",
        "mailbox": MAILBOX,
        "uidvalidity": UIDVALIDITY,
        "emails": [{"uid": p.email.uid, "role": p.email.role, "corpus": f"tests/corpus/synthetic/{p.email.corpus}"
                    + (" (Message-ID header removed)" if p.email.drop_message_id else ""),
                    "event_id": p.event_id, "email_id": p.email_id, "message_id": p.message_id,
                    "subject": p.subject, "payload_sha256": payload_sha256(p.payload)} for p in emails],
        "event_ids": {status: [item["event_id"] for item in items] for status, items in seen["outbox"].items()},
        **seen,
    }


def main() -> None:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    redis_version = _run(binary, "--version")
    emails = [prepare(email) for email in EMAILS]
    for p in emails:
        assert p.event_id.startswith("msg_") and len(p.event_id) == 36, p.event_id
    status_doc = status_document()
    work = tempfile.mkdtemp(prefix="golden-state-")
    try:
        write_sqlite(work, emails, status_doc)
        write_redis(binary, emails, status_doc)
        from_sqlite = read_sqlite(work, emails)
        from_redis = read_redis(binary, emails)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if from_sqlite != from_redis:
        raise SystemExit("the two backends read back different state:\n"
                         + json.dumps({"sqlite": from_sqlite, "redis": from_redis}, indent=1, default=str))
    check_intent(from_sqlite, emails)
    doc = manifest(from_sqlite, emails, redis_version)
    with open(os.path.join(HERE, "MANIFEST.json"), "w", encoding="utf-8") as handle:
        json.dump(doc, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    for name in (SQLITE_FIXTURE, REDIS_FIXTURE):
        print(f"{name}: {doc['files'][name]['bytes']} bytes")
    print({status: len(ids) for status, ids in doc["event_ids"].items()})


if __name__ == "__main__":
    main()
