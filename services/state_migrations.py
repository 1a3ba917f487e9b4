"""The state schema's versions and the steps between them, for both backends of the state store.

Each step is additive: it adds columns, keys or fields with defaults and never renames, drops or rewrites what a
previous release reads, so the previous release keeps working on migrated state while Render runs old and new
instances side by side during a deploy (``OLDEST_READER``: the oldest schema whose code may still work on state at
``SCHEMA_VERSION``). A store records its version (SQLite ``meta.schema_version``, Redis
``render_signal:v1:schema_version``) and its oldest reader; opening state written by a newer release is refused
only when that release says this one can no longer read it.

Version 1 is the layout issues 2-13 wrote. Version 2 (issue 14): outbox items name their mailbox id and target id
(``mailbox_id``, ``target_id``; items written before read as ``default``). Version 3 (issue 15): parked emails,
the per-mailbox fetch retry set, failure counts of flag requests, the fingerprint of each Message-ID's first email,
and each outbox item's attempt log. Version 4 (issue 16): outbox items may be ``enriching`` (queued, waiting for
the R2 copy of their links; not claimable, counted as pending). Version 5 (issue 17): an email is done (its done
record written, its flag request queued) only once every item of it, one per target, has ended; each mailbox and
target's due items are claimed on their own. Version 7 (issue 20): paused targets, the operator action
history, fixed-window counters and small records with a TTL. The keys of mailbox ``default``
(checkpoints and flag requests under its folder name, done records under the email id) are those of version 1
unchanged, so nothing is rewritten; any other mailbox's keys carry its id (``MailboxConfig.state_key``).
Pure: the backends run the statements and record the versions.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 7
OLDEST_READER = 1
FIRST_VERSION = 1


@dataclass(frozen=True)
class Step:
    """What brings state from ``version - 1`` to ``version``. ``sqlite``: statements run in one transaction.
    ``redis_note``: what the step means for Redis (the Redis layout only ever gains keys and hash fields that
    readers default, so its steps change no key)."""

    version: int
    summary: str
    sqlite: tuple[str, ...]
    redis_note: str


STEPS: tuple[Step, ...] = (
    Step(2, "outbox items name their mailbox id and target id",
         sqlite=("ALTER TABLE outbox ADD COLUMN mailbox_id TEXT NOT NULL DEFAULT 'default'",
                 "ALTER TABLE outbox ADD COLUMN target_id TEXT NOT NULL DEFAULT 'default'",
                 "CREATE INDEX IF NOT EXISTS outbox_pending_owner ON outbox (mailbox_id, target_id) "
                 "WHERE status = 'pending'"),
         redis_note="item hashes gain mailbox_id and target_id; a hash without them reads as 'default'"),
    Step(3, "parked emails, fetch retries, flag failures, message identities and attempt logs",
         sqlite=("CREATE TABLE IF NOT EXISTS parked (parked_id TEXT PRIMARY KEY, mailbox_id TEXT NOT NULL, "
                 "mailbox TEXT NOT NULL, uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL, reason TEXT NOT NULL, "
                 "email_id TEXT, message_id TEXT, subject TEXT, detail TEXT, parked_at REAL NOT NULL, "
                 "replay_requested_at REAL, replay_refused TEXT, expires_at REAL NOT NULL)",
                 "CREATE INDEX IF NOT EXISTS parked_order ON parked (parked_at)",
                 "CREATE INDEX IF NOT EXISTS parked_replay ON parked (mailbox_id, replay_requested_at) "
                 "WHERE replay_requested_at IS NOT NULL",
                 "CREATE TABLE IF NOT EXISTS fetch_failures (mailbox TEXT NOT NULL, uidvalidity INTEGER NOT NULL, "
                 "uid INTEGER NOT NULL, failures INTEGER NOT NULL, last_error TEXT, updated_at REAL NOT NULL, "
                 "PRIMARY KEY (mailbox, uidvalidity, uid))",
                 "CREATE TABLE IF NOT EXISTS identities (email_id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, "
                 "uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL, expires_at REAL NOT NULL)",
                 "ALTER TABLE flags ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",
                 "ALTER TABLE outbox ADD COLUMN attempt_log TEXT"),
         redis_note="new keys parked:*, parked_index, fetch_retry:*, flag_failures:*, identity:*; item hashes "
                    "gain attempt_log"),
    Step(4, "outbox items waiting for their R2 copies (status enriching)",
         sqlite=("CREATE INDEX IF NOT EXISTS outbox_enriching ON outbox (created_at) WHERE status = 'enriching'",),
         redis_note="new key outbox:enriching; an enriching item is in outbox:pending_since but not in "
                    "outbox:pending, so no release claims it"),
    Step(5, "an email is done once every item of it (one per target) has ended",
         sqlite=("CREATE INDEX IF NOT EXISTS outbox_email ON outbox (email_id)",
                 "ALTER TABLE outbox ADD COLUMN held_until REAL",
                 "CREATE TABLE IF NOT EXISTS mailbox_status (mailbox_id TEXT PRIMARY KEY, doc TEXT NOT NULL, "
                 "expires_at REAL NOT NULL)",
                 "CREATE TABLE IF NOT EXISTS epochs (mailbox_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL)",
                 "CREATE INDEX IF NOT EXISTS outbox_owner_due ON outbox (mailbox_id, target_id, due_at) "
                 "WHERE status = 'pending'"),
         redis_note="new keys email:<email_id> (a hash: open = items not yet ended, dead = the first dead "
                    "reason; an item queued before has none and ends its email alone, as it always did) and "
                    "outbox:due:<mailbox_id>:<target_id> (each owner's due items, so that one target's backlog "
                    "never delays another's; an index kept in step lazily from outbox:pending, which stays the "
                    "authority; items queued by an older release are adopted from it as they come due); item "
                    "hashes gain held_until; new keys status:mailbox:<id> (each mailbox holder's status) and "
                    "epoch:<mailbox_id> (the lease epoch that fences claims, enqueues and checkpoint moves)"),
    Step(6, "each OAuth2 mailbox's newest refresh token (providers rotate them on use)",
         sqlite=("CREATE TABLE IF NOT EXISTS oauth_tokens (mailbox_id TEXT PRIMARY KEY, token TEXT NOT NULL, "
                 "updated_at REAL NOT NULL)",),
         redis_note="new keys oauth:refresh:<mailbox_id> (the newest refresh token, as stored: encrypted with "
                    "STATE_ENCRYPTION_KEY when it is set) and oauth:lock:<mailbox_id> (the lock one refresh holds)"),
    Step(7, "paused targets, the operator action history, fixed-window counters and records with a TTL",
         sqlite=("CREATE TABLE IF NOT EXISTS paused_targets (target_id TEXT PRIMARY KEY, paused_at REAL NOT NULL)",
                 "CREATE TABLE IF NOT EXISTS actions (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, "
                 "entry TEXT NOT NULL)",
                 "CREATE TABLE IF NOT EXISTS hits (key TEXT NOT NULL, window_seconds REAL NOT NULL, "
                 "window_index INTEGER NOT NULL, count INTEGER NOT NULL, expires_at REAL NOT NULL, "
                 "PRIMARY KEY (key, window_seconds, window_index))",
                 "CREATE TABLE IF NOT EXISTS records (namespace TEXT NOT NULL, key TEXT NOT NULL, "
                 "record TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (namespace, key))"),
         redis_note="new keys paused_targets (a hash: target id -> paused at; claims skip those targets' items; an "
                    "older release's claim does not know it), actions (a list), hit:<key>:<window>:<index>, "
                    "record:<namespace>:<key> and email_items:<email_id> (the event ids of an email's items; an "
                    "item queued before is found by its key pattern)"),
)


class SchemaTooNew(Exception):
    """The state was written by a release whose layout this one cannot read."""


def steps_after(version: int) -> tuple[Step, ...]:
    """The steps to run, in order, on state at ``version``."""
    return tuple(step for step in STEPS if step.version > version)


def check_readable(stored_version: int, stored_oldest_reader: int) -> None:
    """Refuse state this release cannot work on (``SchemaTooNew``); newer additive state is fine."""
    if stored_version > SCHEMA_VERSION and stored_oldest_reader > SCHEMA_VERSION:
        raise SchemaTooNew(f"the state has schema version {stored_version}, readable from version "
                           f"{stored_oldest_reader}; this release reads version {SCHEMA_VERSION}")
