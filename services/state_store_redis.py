"""Redis backend of the state store: shared by every worker of every container.

Key layout (``P`` = ``render_signal:v1:``; the lease key ``render_signal:poller_lock`` belongs to the lease module;
a future incompatible layout gets a new prefix and can live beside this one during a zero-downtime deploy):

==================================  =========  ==================================================  =================
key                                 type       content                                             expiry
==================================  =========  ==================================================  =================
P checkpoint:<mailbox state key>    hash       uidvalidity -> last UID handled                     never
P done:<email_id>                   string     "enqueued" | "delivered" | "skipped:<r>" | "dead:<r>"  retention
P item:<event_id>                   hash       one outbox item (fields of ``OutboxItem``;          pending: never;
                                               ``payload`` is JSON; ``pending_since``)             delivered/dead:
                                                                                                   retention
P outbox:pending                    zset       pending event ids, score = when claimable next      members removed
                                               (next_attempt_at, or claimed_until while claimed)   on delivery/dead
P outbox:pending_since              zset       pending event ids, score = enqueued/replayed at     (same)
P outbox:enriching                  zset       enriching event ids (waiting for R2 copies),        moved to pending
                                               score = enqueued at                                 when finished
P outbox:delivered                  zset       delivered event ids, score = delivered_at           trimmed to
P outbox:dead                       zset       dead event ids, score = dead_at                     retention by score
P flags:<mailbox state key>         zset       "<uidvalidity>:<uid>:<message_id>", score = queued  key: retention
P r2:<sha256 of source URL>         string     JSON reuse record                                   its own TTL
P counters                          hash       "<name>" or "<name>:<k>=<v>,<k>=<v>" (label names   never (bounded)
                                               sorted; a v1 "<name>:<v>" is reason=<v>) -> integer
P status                            string     JSON status document with ``published_at``          its own TTL
P recent                            list       JSON entries, newest first, at most 100             retention
P attempts:<event_id>               list       the item's last 20 attempts (JSON), oldest first     retention
P flag_failures:<mailbox state key> hash       flag request member -> failed applications          retention
P fetch_retry:<state key>:<uidv>    hash       uid -> failed fetches (the mailbox's retry set)     retention
P identity:<email_id>               string     JSON fingerprint and origin of the id's first email retention
P parked:<parked_id>                hash       one parked email (fields of ``ParkedEmail``)        retention
P parked_index                      zset       parked ids, score = parked_at                       trimmed
P parked_replay:<mailbox_id>        zset       parked ids whose replay was requested               removed on replay
P paused_targets                    hash       target id -> paused at (issue 20)                   never
P actions                           list       JSON {"t": at, "e": entry}, newest first, <= 1000   30 days
P hit:<key>:<window s>:<index>      string     hits of one fixed window                            its window
P record:<namespace>:<key>          string     JSON record (put_record)                            its own TTL
P email_items:<email_id>            set        the event ids of the email's items                  with its items
P schema_version                    string     the schema version (services/state_migrations.py)   never
P schema_oldest_reader              string     the oldest schema version that can work on it       never
==================================  =========  ==================================================  =================

A mailbox's state key is ``MailboxConfig.state_key``: its folder name for mailbox ``default`` (the version 1 keys,
unchanged), ``<mailbox_id>:<folder>`` for any other. Item hashes name ``mailbox_id`` and ``target_id`` (absent in
items written before schema version 2: ``default``). An item of uid 0 queues no flag request.

Every change that touches more than one key runs in one Lua script (registered with ``register_script``, run with
EVALSHA) or a MULTI/EXEC pipeline, so a crash or a dropped connection never leaves half a transition. The scripts
build item keys from the prefix, so this layout is for a single Redis (Render Key Value), not Redis Cluster.
Claiming moves an item's score in ``outbox:pending`` to its claim expiry: an item is claimable exactly when its
score is <= now, whether it waits for its next attempt or for a dead claim to lapse.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Sequence

import redis

from config import DEFAULT_ID
from services.state_migrations import OLDEST_READER, SCHEMA_VERSION, SchemaTooNew, check_readable
from services.state_store import (
    ACTIONS_KEEP,
    ACTIONS_TTL_SECONDS,
    ATTEMPT_LOG_KEEP,
    DEAD_RECENT_COUNT,
    RECENT_KEEP,
    REFRESH_LOCK_TTL_SECONDS,
    REFRESH_LOCK_WAIT_SECONDS,
    Fence,
    FlagRequest,
    OutboxItem,
    OutboxStatus,
    ParkedEmail,
    StaleFence,
    StateStoreError,
    bounded,
    check_counter_name,
    check_record_address,
    check_status,
    counter_label_part,
    counter_labels,
    dumps,
    fold_series,
    hit_window,
    now_or_clock,
    parse_label_part,
    queued_status,
    translating,
)

logger = logging.getLogger(__name__)

PREFIX = "render_signal:v1:"
PAUSED_SCAN = 1000   # an unfiltered claim passes over at most this many due items of paused targets
_errors = translating(redis.RedisError, OSError)

_INT_FIELDS = ("uidvalidity", "uid", "attempts", "last_status")
_FLOAT_FIELDS = ("next_attempt_at", "created_at", "first_attempt_at", "delivered_at", "dead_at", "claimed_until",
                 "held_until")
_STR_FIELDS = ("event_id", "email_id", "mailbox", "message_id", "status", "last_error", "dead_reason",
               "response_excerpt", "claim_owner", "mailbox_id", "target_id")

# KEYS: item, pending (or enriching), pending_since (or enriching), done, email, owner's due set (or '' when
# enriching), the email's item set.  ARGV: event_id, score, since, ttl, fields.  ``email`` counts the email's items
# not yet ended (open); its item set lives as long as they do (no TTL until the last ends).
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SADD', KEYS[7], ARGV[1])
redis.call('PERSIST', KEYS[7])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if KEYS[6] ~= '' then redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1]) end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('SET', KEYS[4], 'enqueued', 'PX', ARGV[4])
redis.call('HINCRBY', KEYS[5], 'open', 1)
redis.call('PEXPIRE', KEYS[5], ARGV[4])
return 1
"""

# The end of one item (Lua, shared by the delivered and dead scripts): the email is done, and its flag request
# queued, once no item of it is open; an email without the count (queued by a release before schema version 5)
# ends with its one item. f: email_id, mailbox, uidvalidity, uid, message_id; dead: this item's dead reason or nil.
_END_OF_ITEM = """
local function end_of_item(prefix, f, at, ttl, dead)
  local email = prefix .. 'email:' .. f[1]
  local open = redis.call('HINCRBY', email, 'open', -1)
  if dead then redis.call('HSETNX', email, 'dead', dead) end
  if open > 0 then
    redis.call('PEXPIRE', email, ttl)
    return
  end
  local first_dead = redis.call('HGET', email, 'dead')
  redis.call('DEL', email)
  redis.call('PEXPIRE', prefix .. 'email_items:' .. f[1], ttl)
  redis.call('SET', prefix .. 'done:' .. f[1], first_dead and ('dead:' .. first_dead) or 'delivered', 'PX', ttl)
  if f[4] ~= '0' then
    local flags = prefix .. 'flags:' .. f[2]
    redis.call('ZADD', flags, 'NX', at, f[3] .. ':' .. f[4] .. ':' .. (f[5] or ''))
    redis.call('PEXPIRE', flags, ttl)
  end
end
"""

# An item's owner's due set (Lua, shared by every script that moves an item's due time): the index
# outbox:due:<mailbox_id>:<target_id> of outbox:pending (the key ``RedisStateStore._owner_due`` builds), named by the
# item hash's mailbox_id and target_id (absent before schema version 2: default).
_OWNER_DUE = """
local function owner_due_key(prefix, key)
  local o = redis.call('HMGET', key, 'mailbox_id', 'target_id')
  return prefix .. 'outbox:due:' .. (o[1] or 'default') .. ':' .. (o[2] or 'default')
end
local function set_owner_due(prefix, key, due, id)
  redis.call('ZADD', owner_due_key(prefix, key), due, id)
end
"""

# Claim pending items (Lua, shared by the claim scripts): ``claim_item`` starts an attempt of one, in flight until
# claimed_until, when outbox:pending (``pending``) has it due again, and keeps its fields (HGETALL) for the reply;
# ``claims`` counts the possible duplicates (items claimed while still in flight) and returns what was claimed.
_CLAIM_ITEM = """
local claimed, possible_duplicates = {}, 0
local function claim_item(key, id, pending, now, claimed_until, owner)
  if redis.call('HGET', key, 'in_flight') == '1' then possible_duplicates = possible_duplicates + 1 end
  redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSETNX', key, 'first_attempt_at', now)
  redis.call('HSET', key, 'in_flight', '1', 'claimed_until', claimed_until, 'claim_owner', owner)
  redis.call('ZADD', pending, claimed_until, id)
  claimed[#claimed + 1] = redis.call('HGETALL', key)
end
local function claims(counters)
  if possible_duplicates > 0 then redis.call('HINCRBY', counters, 'possible_duplicates', possible_duplicates) end
  return claimed
end
"""

# Undo the claim of an item in flight (Lua, shared by release and hold): the attempt it counted is taken back, and
# when earlier attempts remain, the start of its retry window is moved on by ``shift`` seconds (nil: not moved).
# Returns false, changing nothing, when the item is not pending and in flight.
_UNDO_CLAIM = """
local function undo_claim(key, shift)
  if redis.call('HGET', key, 'status') ~= 'pending' or redis.call('HGET', key, 'in_flight') ~= '1' then
    return false
  end
  local attempts = tonumber(redis.call('HGET', key, 'attempts') or '0')
  if attempts <= 1 then
    redis.call('HSET', key, 'attempts', '0')
    redis.call('HDEL', key, 'first_attempt_at')
  else
    redis.call('HSET', key, 'attempts', tostring(attempts - 1))
    local first = shift and redis.call('HGET', key, 'first_attempt_at')
    if first then redis.call('HSET', key, 'first_attempt_at', tostring(tonumber(first) + tonumber(shift))) end
  end
  redis.call('HSET', key, 'in_flight', '0')
  redis.call('HDEL', key, 'claimed_until', 'claim_owner')
  return true
end
"""

# Append one attempt (JSON; '' for none) to an item's attempt log (Lua, shared by the scripts that end an attempt):
# the last ATTEMPT_LOG_KEEP are kept, for the retention.
_LOG_ATTEMPT = f"""
local function log_attempt(log, attempt, ttl)
  if attempt == '' then return end
  redis.call('RPUSH', log, attempt)
  redis.call('LTRIM', log, -{ATTEMPT_LOG_KEEP}, -1)
  redis.call('PEXPIRE', log, ttl)
end
"""

# KEYS: item, pending, pending_since, enriching.  ARGV: event_id, payload, now, prefix
_FINISH_ENRICHMENT = _OWNER_DUE + """
if redis.call('HGET', KEYS[1], 'status') ~= 'enriching' then return 0 end
local since = redis.call('ZSCORE', KEYS[4], ARGV[1]) or ARGV[3]
redis.call('HSET', KEYS[1], 'payload', ARGV[2], 'status', 'pending', 'next_attempt_at', ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
set_owner_due(ARGV[4], KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], since, ARGV[1])
return 1
"""

# KEYS: owner's due set, pending, pending_since, counters, paused targets.  ARGV: now, limit, claimed_until, claim
# owner, prefix, target id (a paused target's items are claimed by nobody). The owner's due set
# (outbox:due:<mailbox_id>:<target_id>) is an index of outbox:pending, which stays the authority on due times: a
# stale entry (claimed, rescheduled or finished since) is brought in step when seen. Due items at the front of
# outbox:pending that no owner set holds yet (queued by an older release) are adopted first.
_CLAIM_FOR = _OWNER_DUE + _CLAIM_ITEM + """
if redis.call('HEXISTS', KEYS[5], ARGV[6]) == 1 then return {} end
local prefix = ARGV[5]
local limit = tonumber(ARGV[2])
local front = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 20)
for _, id in ipairs(front) do
  redis.call('ZADD', owner_due_key(prefix, prefix .. 'item:' .. id), 'NX', redis.call('ZSCORE', KEYS[2], id), id)
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, limit * 4)
for _, id in ipairs(ids) do
  if #claimed >= limit then break end
  local key = prefix .. 'item:' .. id
  local due = redis.call('ZSCORE', KEYS[2], id)
  if not due or redis.call('HGET', key, 'status') ~= 'pending' then
    redis.call('ZREM', KEYS[1], id)
  elseif tonumber(due) > tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], due, id)
  else
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    claim_item(key, id, KEYS[2], ARGV[1], ARGV[3], ARGV[4])
  end
end
return claims(KEYS[4])
"""

# KEYS: pending, pending_since, counters, paused targets.  ARGV: now, limit, claimed_until, owner, item key prefix.
# The owners' due sets are not moved: a claim by owner brings a stale entry in step when it sees it
# (``_CLAIM_FOR``). Items of a paused target are passed over (they stay at the front: ``skipped`` of them), at most
# PAUSED_SCAN of them per claim.
_CLAIM = _CLAIM_ITEM + f"""
local limit = tonumber(ARGV[2])
local paused = redis.call('HLEN', KEYS[4]) > 0
local skipped = 0
while #claimed < limit and skipped <= {PAUSED_SCAN} do
  local page = limit - #claimed
  if paused then page = page + 50 end
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', skipped, page)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    if #claimed >= limit then break end
    local key = ARGV[5] .. id
    if redis.call('HGET', key, 'status') ~= 'pending' then
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZREM', KEYS[2], id)
    elseif paused and redis.call('HEXISTS', KEYS[4], redis.call('HGET', key, 'target_id') or 'default') == 1 then
      skipped = skipped + 1
    else
      claim_item(key, id, KEYS[1], ARGV[1], ARGV[3], ARGV[4])
    end
  end
  if not paused then break end
end
return claims(KEYS[3])
"""

# KEYS: item, pending, pending_since, delivered, counters, attempts
# ARGV: event_id, now, http status, retention ms, delivered cutoff, prefix, attempt JSON or ''
_MARK_DELIVERED = _END_OF_ITEM + _LOG_ATTEMPT + """
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
local f = redis.call('HMGET', KEYS[1], 'email_id', 'mailbox', 'uidvalidity', 'uid', 'message_id', 'target_id')
redis.call('HSET', KEYS[1], 'status', 'delivered', 'delivered_at', ARGV[2], 'last_status', ARGV[3], 'in_flight', '0')
redis.call('HDEL', KEYS[1], 'claimed_until', 'claim_owner')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[5])
end_of_item(ARGV[6], f, ARGV[2], ARGV[4], nil)
redis.call('HINCRBY', KEYS[5], 'webhooks_delivered:target=' .. (f[6] or 'default'), 1)
log_attempt(KEYS[6], ARGV[7], ARGV[4])
return 1
"""

# KEYS: item, pending, counters, attempts.  ARGV: event_id, next_attempt_at, error, http status or '', attempt
# JSON or '', retention ms, prefix (the owner's due set must learn a due time earlier than the claim's end)
_RESCHEDULE = _OWNER_DUE + _LOG_ATTEMPT + """
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[2], 'last_error', ARGV[3], 'in_flight', '0')
if ARGV[4] == '' then redis.call('HDEL', KEYS[1], 'last_status')
else redis.call('HSET', KEYS[1], 'last_status', ARGV[4]) end
redis.call('HDEL', KEYS[1], 'claimed_until', 'claim_owner')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
set_owner_due(ARGV[7], KEYS[1], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'webhook_retries:target=' .. (redis.call('HGET', KEYS[1], 'target_id') or 'default'), 1)
log_attempt(KEYS[4], ARGV[5], ARGV[6])
return 1
"""

# KEYS: item, pending, pending_since, dead, counters, attempts
# ARGV: event_id, now, reason, http status or '', excerpt, has excerpt '1'/'0', retention ms, dead cutoff, prefix,
# attempt JSON or ''
_DEAD_LETTER = _END_OF_ITEM + _LOG_ATTEMPT + """
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
local f = redis.call('HMGET', KEYS[1], 'email_id', 'mailbox', 'uidvalidity', 'uid', 'message_id', 'target_id')
redis.call('HSET', KEYS[1], 'status', 'dead', 'dead_reason', ARGV[3], 'dead_at', ARGV[2], 'in_flight', '0')
if ARGV[4] == '' then redis.call('HDEL', KEYS[1], 'last_status')
else redis.call('HSET', KEYS[1], 'last_status', ARGV[4]) end
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'response_excerpt', ARGV[5])
else redis.call('HDEL', KEYS[1], 'response_excerpt') end
redis.call('HDEL', KEYS[1], 'claimed_until', 'claim_owner')
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[8])
end_of_item(ARGV[9], f, ARGV[2], ARGV[7], ARGV[3])
redis.call('HINCRBY', KEYS[5], 'dead_letters:target=' .. (f[6] or 'default'), 1)
log_attempt(KEYS[6], ARGV[10], ARGV[7])
return 1
"""

# KEYS: dead, pending, pending_since.  ARGV: now, prefix, retention ms, event id ('' = every dead letter), since
# ('' = any time: else only items dead at or after it), target id ('' = any).  The status is checked and changed in
# the script, so of concurrent replays of one dead letter exactly one counts it.
_REPLAY = _OWNER_DUE + """
local ids
if ARGV[4] ~= '' then ids = {ARGV[4]}
elseif ARGV[5] ~= '' then ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[5], '+inf')
else ids = redis.call('ZRANGE', KEYS[1], 0, -1) end
local n = 0
for _, id in ipairs(ids) do
  local key = ARGV[2] .. 'item:' .. id
  local f = redis.call('HMGET', key, 'status', 'dead_at', 'target_id')
  local st = f[1]
  local wanted = (ARGV[5] == '' or tonumber(f[2] or '0') >= tonumber(ARGV[5]))
    and (ARGV[6] == '' or (f[3] or 'default') == ARGV[6])
  if st == 'dead' and wanted then
    redis.call('HSET', key, 'status', 'pending', 'attempts', '0', 'next_attempt_at', ARGV[1], 'in_flight', '0')
    redis.call('HDEL', key, 'dead_reason', 'dead_at', 'first_attempt_at', 'claimed_until', 'claim_owner')
    redis.call('PERSIST', key)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], ARGV[1], id)
    redis.call('ZADD', KEYS[3], ARGV[1], id)
    set_owner_due(ARGV[2], key, ARGV[1], id)
    local email_id = redis.call('HGET', key, 'email_id')
    redis.call('SET', ARGV[2] .. 'done:' .. email_id, 'enqueued', 'PX', ARGV[3])
    redis.call('PERSIST', ARGV[2] .. 'email_items:' .. email_id)
    -- open again; a replayed item clears the email's dead mark (the operator asked for another try)
    local email = ARGV[2] .. 'email:' .. email_id
    redis.call('HINCRBY', email, 'open', 1)
    redis.call('HDEL', email, 'dead')
    redis.call('PEXPIRE', email, ARGV[3])
    n = n + 1
  elseif not st then
    redis.call('ZREM', KEYS[1], id)
  end
end
return n
"""

# KEYS: item, pending.  ARGV: event_id, prefix.  Undoes a claim that ended without an attempt.
_RELEASE_CLAIM = _OWNER_DUE + _UNDO_CLAIM + """
if not undo_claim(KEYS[1], nil) then return 0 end
local due = redis.call('HGET', KEYS[1], 'next_attempt_at') or '0'
redis.call('ZADD', KEYS[2], due, ARGV[1])
set_owner_due(ARGV[2], KEYS[1], due, ARGV[1])
return 1
"""

# KEYS: item, pending, pending_since, held.  ARGV: event_id, until, seconds held, prefix.  Holds a claimed item
# outside its target's window: no attempt counted, due at ``until``, its retry window and backlog age moved on by
# the time held (``outbox:held``: event id -> until, what the stats count as held rather than pending).
_HOLD = _OWNER_DUE + _UNDO_CLAIM + """
if not undo_claim(KEYS[1], ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[2], 'held_until', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
set_owner_due(ARGV[4], KEYS[1], ARGV[2], ARGV[1])
return 1
"""

# KEYS: schema_version, schema_oldest_reader.  ARGV: this release's version, its oldest reader.
# Returns the stored version and oldest reader before the call; records ours when the stored one is older.
_MIGRATE = """
local version = tonumber(redis.call('GET', KEYS[1]) or '1')
local oldest = tonumber(redis.call('GET', KEYS[2]) or '1')
if version <= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2])
end
return {version, oldest}
"""

# KEYS: checkpoint hash.  ARGV: uidvalidity, uid
_SET_CHECKPOINT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: pending, pending_since, dead.  ARGV: dead cutoff, how many recent, prefix
_OUTBOX_STATS = """
local pending = redis.call('ZCARD', KEYS[1])
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local dead = redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[1], '+inf')
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[3], '+inf', '(' .. ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local recent = {}
for i = 1, #ids, 2 do
  local h = redis.call('HMGET', ARGV[3] .. 'item:' .. ids[i], 'dead_reason', 'last_status')
  if h[1] then recent[#recent + 1] = {ids[i], h[1], h[2] or '', ids[i + 1]} end
end
return {pending, oldest[2] or '', dead, recent}
"""


def _target_entry(stats: dict[str, dict], target_id: str | None) -> dict:
    return stats.setdefault(target_id or DEFAULT_ID, {"pending": 0, "held": 0, "dead": 0, "oldest_pending_age_s": None,
                                                      "oldest_due_at": None, "oldest_due_delay": None})


@dataclass
class _PendingPass:
    """What one pass over the pending and enriching items finds (``outbox_breakdown``): per target the
    ``target_stats`` entry (dead letters are added after the pass), per mailbox and per target how many items are
    queued (``pending_owners``), and per target its oldest due item."""

    now: float
    targets: dict[str, dict] = field(default_factory=dict)
    mailbox_counts: dict[str, int] = field(default_factory=dict)
    target_counts: dict[str, int] = field(default_factory=dict)
    due_heads: dict[str, tuple[str, float]] = field(default_factory=dict)  # target -> (event id, due at)

    def add(self, event_id: str, due_at: float | None, fields: list, since: Any) -> None:
        """Count one item: ``due_at`` its score in outbox:pending (None when enriching), ``fields`` its status,
        mailbox_id, target_id, held_until and created_at, ``since`` its score in outbox:pending_since."""
        status, mailbox_id, target_id, held_until, created_at = fields
        if status not in (OutboxStatus.PENDING, OutboxStatus.ENRICHING):
            return
        mailbox_id, target_id = mailbox_id or DEFAULT_ID, target_id or DEFAULT_ID
        self.mailbox_counts[mailbox_id] = self.mailbox_counts.get(mailbox_id, 0) + 1
        self.target_counts[target_id] = self.target_counts.get(target_id, 0) + 1
        counts = _target_entry(self.targets, target_id)
        if held_until is not None and float(held_until) > self.now:
            counts["held"] += 1
            return
        counts["pending"] += 1
        age = max(0.0, self.now - (float(since) if since is not None else float(created_at or self.now)))
        if counts["oldest_pending_age_s"] is None or age > counts["oldest_pending_age_s"]:
            counts["oldest_pending_age_s"] = age
        # due exactly as outbox_stats' oldest due item: a live claim's score is its claimed_until, still ahead
        if due_at is not None and due_at <= self.now and status == OutboxStatus.PENDING:
            self.due_heads.setdefault(target_id, (event_id, float(due_at)))


def _scheduled_delay(next_attempt_at: str | None, last_attempt: str | None) -> float:
    """How long the item was scheduled to wait after its last attempt (0 without one): its ``next_attempt_at``
    field and the newest entry (JSON) of its attempt log."""
    if not last_attempt or next_attempt_at is None:
        return 0.0
    return max(0.0, float(next_attempt_at) - float(json.loads(last_attempt).get("at") or 0.0))


def _num(value: float) -> str:
    return repr(float(value))


def item_to_fields(item: OutboxItem) -> dict[str, str]:
    fields: dict[str, str] = {"payload": dumps(item.payload), "in_flight": "1" if item.in_flight else "0"}
    for name in _INT_FIELDS:
        value = getattr(item, name)
        if value is not None:
            fields[name] = str(int(value))
    for name in _FLOAT_FIELDS:
        value = getattr(item, name)
        if value is not None:
            fields[name] = _num(value)
    for name in _STR_FIELDS:
        value = getattr(item, name)
        if value is not None:
            fields[name] = str(value)
    return fields


def item_from_fields(fields: dict[str, str]) -> OutboxItem:
    values: dict[str, Any] = {
        "payload": json.loads(fields.get("payload") or "{}"),
        "in_flight": fields.get("in_flight") == "1",
    }
    for name in _INT_FIELDS:
        if name in fields:
            values[name] = int(fields[name])
    for name in _FLOAT_FIELDS:
        if name in fields:
            values[name] = float(fields[name])
    for name in _STR_FIELDS:
        if name in fields:
            values[name] = fields[name]
    values.setdefault("message_id", None)
    # Items written before schema version 2 name neither: they belong to mailbox and target default.
    values["mailbox_id"] = values.get("mailbox_id") or DEFAULT_ID
    values["target_id"] = values.get("target_id") or DEFAULT_ID
    return OutboxItem(**values)


def _attempt_json(attempt: dict | None) -> str:
    return "" if attempt is None else dumps(attempt)


def _with_log(item: OutboxItem, log: list[str]) -> OutboxItem:
    item.attempt_log = [json.loads(entry) for entry in log]
    return item


_PARKED_INTS = ("uidvalidity", "uid")
_PARKED_FLOATS = ("parked_at", "replay_requested_at")


def _parked_from(fields_: dict[str, str]) -> ParkedEmail:
    values: dict[str, Any] = {name: fields_.get(name) for name in ParkedEmail.__dataclass_fields__}
    for name in _PARKED_INTS:
        values[name] = int(values[name] or 0)
    for name in _PARKED_FLOATS:
        values[name] = float(values[name]) if values[name] is not None else None
    values["parked_at"] = values["parked_at"] or 0.0
    return ParkedEmail(**values)


def _pairs(flat: list[str]) -> dict[str, str]:
    # A Lua HGETALL reply alternates field and value; an odd tail (never produced) would be dropped, as before.
    return dict(zip(flat[0::2], flat[1::2], strict=False))


def _glob_escaped(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _flag_member(uidvalidity: int, uid: int, message_id: str | None) -> str:
    return f"{int(uidvalidity)}:{int(uid)}:{message_id or ''}"


class RedisStateStore:
    """State in one Redis database under ``render_signal:v1:`` (see the module docstring for the layout)."""

    backend = "redis"

    def __init__(self, client: redis.Redis, *, retention_seconds: float, owns_client: bool = False,
                 prefix: str = PREFIX) -> None:
        if not client.get_connection_kwargs().get("decode_responses"):
            # Replies are parsed as str; build the client with services.redis_client.make_redis_client.
            raise ValueError("RedisStateStore needs a client with decode_responses=True")
        # decode_responses=True (services/redis_client.py): every reply is str, which redis-py's types cannot say.
        self._client: Any = client
        self._owns_client = owns_client
        self._p = prefix
        self._retention = float(retention_seconds)
        self._retention_ms = str(max(1, int(self._retention * 1000)))
        self._pending = prefix + "outbox:pending"
        self._pending_since = prefix + "outbox:pending_since"
        self._enriching = prefix + "outbox:enriching"
        self._delivered = prefix + "outbox:delivered"
        self._dead = prefix + "outbox:dead"
        self._counters = prefix + "counters"
        self._status = prefix + "status"
        self._recent = prefix + "recent"
        self._parked_index = prefix + "parked_index"
        self._paused = prefix + "paused_targets"
        self._actions = prefix + "actions"
        self._enqueue = client.register_script(_ENQUEUE)
        self._finish_enrichment = client.register_script(_FINISH_ENRICHMENT)
        self._claim = client.register_script(_CLAIM)
        self._claim_for = client.register_script(_CLAIM_FOR)
        self._mark_delivered = client.register_script(_MARK_DELIVERED)
        self._reschedule = client.register_script(_RESCHEDULE)
        self._dead_letter = client.register_script(_DEAD_LETTER)
        self._replay = client.register_script(_REPLAY)
        self._set_checkpoint = client.register_script(_SET_CHECKPOINT)
        self._outbox_stats = client.register_script(_OUTBOX_STATS)
        self._migrate_script = client.register_script(_MIGRATE)
        self._release_claim = client.register_script(_RELEASE_CLAIM)
        self._hold = client.register_script(_HOLD)
        self._held = prefix + "outbox:held"
        self._schema_version_key = prefix + "schema_version"
        self._schema_oldest_reader_key = prefix + "schema_oldest_reader"
        self._schema_checked = False

    def _item_key(self, event_id: str) -> str:
        return f"{self._p}item:{event_id}"

    def _owner_due(self, mailbox_id: str | None, target_id: str | None) -> str:
        return f"{self._p}outbox:due:{mailbox_id or 'default'}:{target_id or 'default'}"

    def _email_items(self, email_id: str) -> str:
        return f"{self._p}email_items:{email_id}"

    def _attempts_key(self, event_id: str) -> str:
        return f"{self._p}attempts:{event_id}"

    def _cutoff(self, now: float) -> str:
        return _num(now - self._retention)

    @_errors
    def ping(self) -> None:
        self._client.ping()

    # --- schema version ----------------------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        """Record this release's schema version once (opening does no I/O; the first write does this). Every
        step of services/state_migrations.py is additive for Redis, so recording the version is the migration."""
        if self._schema_checked:
            return
        version, oldest = self._migrate_script(keys=[self._schema_version_key, self._schema_oldest_reader_key],
                                               args=[SCHEMA_VERSION, OLDEST_READER])
        try:
            check_readable(int(version), int(oldest))
        except SchemaTooNew as exc:
            raise StateStoreError(f"redis: {exc}") from exc
        if int(version) < SCHEMA_VERSION:
            logger.info("STATE: Redis state migrated from schema version %s to %d", version, SCHEMA_VERSION)
        self._schema_checked = True

    @_errors
    def schema_version(self) -> int:
        self._ensure_schema()
        return int(self._client.get(self._schema_version_key) or 1)

    # --- checkpoints -------------------------------------------------------------------------------------------

    @_errors
    def get_checkpoint(self, mailbox: str, uidvalidity: int) -> int | None:
        value = self._client.hget(f"{self._p}checkpoint:{mailbox}", str(int(uidvalidity)))
        return None if value is None else int(value)

    @_errors
    def set_checkpoint(self, mailbox: str, uidvalidity: int, last_uid: int, *, fence: Fence | None = None) -> None:
        def move(client: Any) -> None:
            self._set_checkpoint(keys=[f"{self._p}checkpoint:{mailbox}"], args=[int(uidvalidity), int(last_uid)],
                                 client=client)

        self._fenced(fence, move)

    @_errors
    # --- OAuth2 refresh tokens ----------------------------------------------------------------------------------

    @_errors
    def read_refresh_token(self, mailbox_id: str) -> str | None:
        """The newest refresh token stored for ``mailbox_id`` (as stored: the caller encrypts), or None."""
        value = self._client.get(f"{self._p}oauth:refresh:{mailbox_id}")
        return None if value is None else str(value)

    @_errors
    def write_refresh_token(self, mailbox_id: str, token: str) -> None:
        self._client.set(f"{self._p}oauth:refresh:{mailbox_id}", token)  # never expires: it is the credential

    @contextmanager
    def refresh_lock(self, mailbox_id: str, ttl_seconds: float = REFRESH_LOCK_TTL_SECONDS,
                     wait_seconds: float = REFRESH_LOCK_WAIT_SECONDS) -> Iterator[None]:
        """Exclude every other refresh of ``mailbox_id`` in the cluster: redis-py's ``Lock`` (a token-checked key
        with a TTL, so a holder that died frees it after ``ttl_seconds``). ``StateStoreError`` after
        ``wait_seconds``."""
        from redis.exceptions import LockError

        lock = self._client.lock(f"{self._p}oauth:lock:{mailbox_id}", timeout=ttl_seconds,
                                 blocking_timeout=wait_seconds)
        try:
            acquired = lock.acquire()
        except (redis.RedisError, OSError) as exc:
            raise StateStoreError(f"redis refresh_lock: {type(exc).__name__}: {exc}") from exc
        if not acquired:
            raise StateStoreError(f"the refresh lock of mailbox {mailbox_id} is busy")
        try:
            yield
        finally:
            try:
                lock.release()
            except LockError:  # it expired meanwhile (a refresh longer than the TTL): nothing left to free
                logger.warning("STATE: the refresh lock of mailbox %s expired before it was released", mailbox_id)
            except (redis.RedisError, OSError) as exc:  # it expires by itself after the TTL
                logger.warning("STATE: could not release the refresh lock of mailbox %s (%s)", mailbox_id, exc)

    def advance_epoch(self, mailbox_id: str) -> int:
        """A new lease holder's epoch for ``mailbox_id``: one more than any before (INCR, never expires)."""
        return int(self._client.incr(self._epoch_key(mailbox_id)))

    def _epoch_key(self, mailbox_id: str) -> str:
        return f"{self._p}epoch:{mailbox_id}"

    def _fenced(self, fence: Fence | None, write: Callable[[Any], Any]) -> list:
        """Run ``write(pipe)`` in MULTI/EXEC, refused (``StaleFence``) when the mailbox's epoch is newer than the
        fence's, checked under WATCH so that no new holder can slip in between the check and the write."""
        if fence is None:
            pipe = self._client.pipeline(transaction=True)
            write(pipe)
            return pipe.execute()
        key = self._epoch_key(fence[0])
        with self._client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                current = int(pipe.get(key) or 0)
                if current > int(fence[1]):
                    raise StaleFence(f"redis: the lease of mailbox {fence[0]} has epoch {current}, not {fence[1]}")
                pipe.multi()
                write(pipe)
                return pipe.execute()
            except redis.WatchError:
                raise StaleFence(f"redis: the lease of mailbox {fence[0]} changed hands during the write") from None

    @_errors
    def has_any_checkpoint(self, mailbox: str) -> bool:
        return bool(self._client.hlen(f"{self._p}checkpoint:{mailbox}"))

    # --- done records ------------------------------------------------------------------------------------------

    @_errors
    def get_done(self, email_id: str) -> str | None:
        return self._client.get(f"{self._p}done:{email_id}")

    @_errors
    def mark_done(self, email_id: str, outcome: str) -> None:
        self._client.set(f"{self._p}done:{email_id}", outcome, px=int(self._retention_ms))

    # --- outbox ------------------------------------------------------------------------------------------------

    @_errors
    def enqueue(self, item: OutboxItem) -> bool:
        return self.enqueue_all([item])[0]

    @_errors
    def enqueue_all(self, items: Sequence[OutboxItem], *, fence: Fence | None = None) -> list[bool]:
        """Queue the items of one email (one per target) in one transaction (MULTI/EXEC), so that no item of it
        can end, and the email be flagged done, before all of them are queued; True for each item created."""
        if not items:
            return []
        self._ensure_schema()
        now = now_or_clock(None)
        calls: list[tuple[list[str], list]] = []
        for item in items:
            status = queued_status(item)
            stored = OutboxItem(**{**item.__dict__, "status": status, "in_flight": False,
                                   "created_at": item.created_at or now, "claimed_until": None, "claim_owner": None})
            fields = item_to_fields(stored)
            fields["pending_since"] = _num(now)
            flat: list[str] = []
            for name, value in fields.items():
                flat += [name, value]
            # An enriching item is in outbox:enriching only (no release claims it); finishing moves it to both sets.
            due_set, since_set = ((self._pending, self._pending_since) if status == OutboxStatus.PENDING
                                  else (self._enriching, self._enriching))
            owner_set = self._owner_due(item.mailbox_id, item.target_id) if status == OutboxStatus.PENDING else ""
            calls.append(([self._item_key(item.event_id), due_set, since_set, f"{self._p}done:{item.email_id}",
                           f"{self._p}email:{item.email_id}", owner_set, self._email_items(item.email_id)],
                          [item.event_id, _num(stored.next_attempt_at), _num(now), self._retention_ms, *flat]))

        def enqueue(pipe: Any) -> None:
            for keys, args in calls:
                self._enqueue(keys=keys, args=args, client=pipe)

        return [bool(created) for created in self._fenced(fence, enqueue)]

    @_errors
    def finish_enrichment(self, event_id: str, payload: dict, now: float) -> bool:
        """An ``enriching`` item becomes ``pending`` with its final body, due at ``now``; False if it was not
        enriching (finished already, by this process or another)."""
        return bool(self._finish_enrichment(
            keys=[self._item_key(event_id), self._pending, self._pending_since, self._enriching],
            args=[event_id, dumps(payload), _num(now), self._p]))

    @_errors
    def claim_due(self, owner: str, now: float, limit: int, claim_seconds: float, *,
                  mailbox_id: str | None = None, target_id: str | None = None,
                  fence: Fence | None = None) -> list[OutboxItem]:
        self._ensure_schema()
        if limit <= 0:
            return []
        if mailbox_id is not None and target_id is not None:
            def claim(pipe: Any) -> None:
                self._claim_for(
                    keys=[self._owner_due(mailbox_id, target_id), self._pending, self._pending_since,
                          self._counters, self._paused],
                    args=[_num(now), int(limit), _num(now + claim_seconds), owner, self._p, target_id], client=pipe)

            [rows] = self._fenced(fence, claim)
            return [item_from_fields(_pairs(row)) for row in rows]
        rows = self._claim(keys=[self._pending, self._pending_since, self._counters, self._paused],
                           args=[_num(now), int(limit), _num(now + claim_seconds), owner, f"{self._p}item:"])
        return [item_from_fields(_pairs(row)) for row in rows]

    @_errors
    def mark_delivered(self, event_id: str, status: int, now: float, attempt: dict | None = None, *,
                       fence: Fence | None = None) -> bool:
        """Never refused: the receiver has the webhook. A stale fence is only counted (``late_acknowledgements``)."""
        if fence is not None and int(self._client.get(self._epoch_key(fence[0])) or 0) > int(fence[1]):
            self._client.hincrby(self._counters, "late_acknowledgements", 1)
        done = self._mark_delivered(
            keys=[self._item_key(event_id), self._pending, self._pending_since, self._delivered, self._counters,
                  self._attempts_key(event_id)],
            args=[event_id, _num(now), int(status), self._retention_ms, self._cutoff(now), self._p,
                  _attempt_json(attempt)])
        return bool(done)

    @_errors
    def reschedule(self, event_id: str, next_attempt_at: float, error: str, status: int | None,
                   attempt: dict | None = None) -> bool:
        done = self._reschedule(
            keys=[self._item_key(event_id), self._pending, self._counters, self._attempts_key(event_id)],
            args=[event_id, _num(next_attempt_at), bounded(error) or "", "" if status is None else int(status),
                  _attempt_json(attempt), self._retention_ms, self._p])
        return bool(done)

    @_errors
    def release_claim(self, event_id: str) -> bool:
        """Undo a claim that ended without an attempt: the attempt is not counted, the item is due again."""
        return bool(self._release_claim(keys=[self._item_key(event_id), self._pending], args=[event_id, self._p]))

    @_errors
    def hold(self, event_id: str, until: float, now: float) -> bool:
        """Hold a claimed item outside its target's delivery window (see ``_HOLD``)."""
        return bool(self._hold(keys=[self._item_key(event_id), self._pending, self._pending_since, self._held],
                               args=[event_id, _num(until), _num(max(0.0, until - now)), self._p]))

    @_errors
    def dead_letter(self, event_id: str, reason: str, status: int | None, excerpt: str | None,
                    now: float | None = None, attempt: dict | None = None) -> bool:
        at = now_or_clock(now)
        done = self._dead_letter(
            keys=[self._item_key(event_id), self._pending, self._pending_since, self._dead, self._counters,
                  self._attempts_key(event_id)],
            args=[event_id, _num(at), reason, "" if status is None else int(status), bounded(excerpt) or "",
                  "0" if excerpt is None else "1", self._retention_ms, self._cutoff(at), self._p,
                  _attempt_json(attempt)])
        return bool(done)

    @_errors
    def get_item(self, event_id: str) -> OutboxItem | None:
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(self._item_key(event_id))
        pipe.lrange(self._attempts_key(event_id), 0, -1)
        fields, log = pipe.execute()
        return _with_log(item_from_fields(fields), log) if fields else None

    @_errors
    def list_items(self, status: str, limit: int = 100) -> list[OutboxItem]:
        """Pending: oldest first. Delivered and dead: newest first."""
        check_status(status)
        if limit <= 0:
            return []
        if status == OutboxStatus.PENDING:
            ids = self._client.zrange(self._pending_since, 0, limit - 1)
        elif status == OutboxStatus.ENRICHING:
            ids = self._client.zrange(self._enriching, 0, limit - 1)
        else:
            ids = self._client.zrevrange(self._delivered if status == OutboxStatus.DELIVERED else self._dead, 0,
                                         limit - 1)
        if not ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for event_id in ids:
            pipe.hgetall(self._item_key(event_id))
            pipe.lrange(self._attempts_key(event_id), 0, -1)
        replies = pipe.execute()
        items = [_with_log(item_from_fields(fields), log)
                 for fields, log in zip(replies[0::2], replies[1::2], strict=True) if fields]
        return [item for item in items if item.status == status]

    @_errors
    def replay(self, event_id: str | None = None, now: float | None = None, *, since: float | None = None,
               target_id: str | None = None) -> int:
        """Dead letters back to pending (one, or every one that died at or after ``since`` for ``target_id``);
        returns how many. One script: of concurrent replays of one dead letter, exactly one counts it."""
        return int(self._replay(keys=[self._dead, self._pending, self._pending_since],
                                args=[_num(now_or_clock(now)), self._p, self._retention_ms, event_id or "",
                                      "" if since is None else _num(since), target_id or ""]))

    @_errors
    def items_for_email(self, email_id: str) -> list[OutboxItem]:
        """Every outbox item of one email (one per target), whatever its status, by target id. Items queued before
        schema version 7 are in no item set: when the set is missing, the email's keys are looked up by pattern."""
        ids = set(self._client.smembers(self._email_items(email_id)))
        if not ids and self._client.exists(f"{self._p}done:{email_id}"):
            pattern = f"{self._p}item:msg_{_glob_escaped(email_id)}*"
            prefix = len(f"{self._p}item:")
            ids = {key[prefix:] for key in self._client.scan_iter(match=pattern, count=1000)}
        if not ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for event_id in sorted(ids):
            pipe.hgetall(self._item_key(event_id))
            pipe.lrange(self._attempts_key(event_id), 0, -1)
        replies = pipe.execute()
        items = [_with_log(item_from_fields(fields), log)
                 for fields, log in zip(replies[0::2], replies[1::2], strict=True) if fields]
        return sorted((item for item in items if item.email_id == email_id), key=lambda item: item.target_id)

    # --- paused targets, operator actions, window counters, records (issue 20) -----------------------------------

    @_errors
    def pause_target(self, target_id: str, now: float) -> bool:
        """Pause a target (durably): no claim hands out its items. False when it was paused already."""
        self._ensure_schema()
        return bool(self._client.hsetnx(self._paused, target_id, _num(now)))

    @_errors
    def resume_target(self, target_id: str) -> bool:
        return bool(self._client.hdel(self._paused, target_id))

    @_errors
    def paused_targets(self) -> dict[str, float]:
        return {target_id: float(at) for target_id, at in self._client.hgetall(self._paused).items()}

    @_errors
    def record_action(self, entry: dict, now: float) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.lpush(self._actions, dumps({"t": float(now), "e": entry}))
        pipe.ltrim(self._actions, 0, ACTIONS_KEEP - 1)
        pipe.pexpire(self._actions, int(ACTIONS_TTL_SECONDS * 1000))
        pipe.execute()

    @_errors
    def actions(self, limit: int = 50) -> list[dict]:
        """The operator actions recorded, newest first (at most ``ACTIONS_KEEP``, none older than 30 days)."""
        if limit <= 0:
            return []
        cutoff = now_or_clock(None) - ACTIONS_TTL_SECONDS
        rows = [json.loads(raw) for raw in self._client.lrange(self._actions, 0, min(limit, ACTIONS_KEEP) - 1)]
        return [row["e"] for row in rows if float(row["t"]) > cutoff]

    @_errors
    def hit(self, key: str, window_seconds: float, now: float) -> int:
        """Count one hit of ``key`` in the fixed window of ``window_seconds`` containing ``now`` (INCR, and an
        expiry at the window's end); returns the window's count, cluster-wide."""
        index = hit_window(window_seconds, now)
        left_ms = int(((index + 1) * float(window_seconds) - float(now)) * 1000)
        pipe = self._client.pipeline(transaction=True)
        counter = f"{self._p}hit:{key}:{_num(window_seconds)}:{index}"
        pipe.incr(counter)
        pipe.pexpire(counter, max(1, left_ms) + 1000)   # a second more: clocks of two hosts differ a little
        return int(pipe.execute()[0])

    def _record_key(self, namespace: str, key: str) -> str:
        check_record_address(namespace, key)
        return f"{self._p}record:{namespace}:{key}"

    @_errors
    def get_record(self, namespace: str, key: str) -> dict | None:
        raw = self._client.get(self._record_key(namespace, key))
        return None if raw is None else json.loads(raw)

    @_errors
    def put_record(self, namespace: str, key: str, record: dict, ttl_seconds: float) -> None:
        self._client.set(self._record_key(namespace, key), dumps(record), px=max(1, int(ttl_seconds * 1000)))

    @_errors
    def compare_and_put_record(self, namespace: str, key: str, expected: dict | None, record: dict,
                               ttl_seconds: float) -> bool:
        """Write ``record`` only if the current one equals ``expected`` (None: there is none): WATCH, compare,
        MULTI/EXEC; a write by another in between makes it compare again."""
        name = self._record_key(namespace, key)
        with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(name)
                    raw = pipe.get(name)
                    if (None if raw is None else json.loads(raw)) != expected:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.set(name, dumps(record), px=max(1, int(ttl_seconds * 1000)))
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    @_errors
    def outbox_stats(self, now: float) -> dict:
        pending, oldest, dead, recent = self._outbox_stats(
            keys=[self._pending, self._pending_since, self._dead],
            args=[self._cutoff(now), DEAD_RECENT_COUNT, self._p])
        due_at, delay = self._oldest_due(now)
        pipe = self._client.pipeline(transaction=False)
        pipe.zcard(self._enriching)
        pipe.zrange(self._enriching, 0, 0, withscores=True)
        pipe.zremrangebyscore(self._held, "-inf", _num(now))  # no longer held: due (or gone) since
        pipe.zcard(self._held)
        enriching, enriching_head, _, held = pipe.execute()
        since = [float(oldest)] if oldest else []
        since += [float(score) for _, score in enriching_head]
        return {
            # an enriching item is queued work too; a held one is not backlog
            "pending": max(0, int(pending) - int(held)) + int(enriching),
            "enriching": int(enriching),
            "held": int(held),
            "oldest_pending_age_s": max(0.0, now - min(since)) if since else None,
            "oldest_due_at": due_at,
            "oldest_due_delay": delay,
            "dead": int(dead),
            "dead_recent": [{"event_id": event_id, "reason": reason, "status": int(code) if code else None,
                             "at": float(at)} for event_id, reason, code, at in recent],
        }

    @_errors
    def pending_owners(self) -> dict[str, dict[str, int]]:
        """How many pending items each mailbox id and each target id has (reads every pending item's fields; the
        pending set is small in a working service)."""
        found = self._pending_pass(now_or_clock(None))
        return {"mailboxes": found.mailbox_counts, "targets": found.target_counts}

    def _oldest_due(self, now: float) -> tuple[float | None, float | None]:
        """The due time of the oldest due pending item and how long it was scheduled to wait after its last
        attempt (the outbox stall rule's inputs)."""
        head = self._client.zrangebyscore(self._pending, "-inf", _num(now), start=0, num=1, withscores=True)
        if not head:
            return None, None
        event_id, due_at = head[0]
        [delay] = self._scheduled_delays([event_id])
        return float(due_at), delay

    def _scheduled_delays(self, event_ids: list[str]) -> list[float]:
        """Each item's scheduled delay after its last attempt (``_scheduled_delay``), read in one round trip."""
        if not event_ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.hget(self._item_key(event_id), "next_attempt_at")
            pipe.lindex(self._attempts_key(event_id), -1)
        answers = pipe.execute()
        return [_scheduled_delay(next_attempt_at, last)
                for next_attempt_at, last in zip(answers[::2], answers[1::2], strict=True)]

    # --- IMAP flag requests ------------------------------------------------------------------------------------

    @_errors
    def flag_keys(self) -> dict[str, int]:
        """How many flag requests wait under each mailbox state key."""
        keys = list(self._client.scan_iter(match=f"{self._p}flags:*", count=100))
        if not keys:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.zcard(key)
        prefix = len(f"{self._p}flags:")
        return {key[prefix:]: int(n) for key, n in zip(keys, pipe.execute(), strict=True) if n}

    @_errors
    def queue_flag(self, mailbox: str, uidvalidity: int, uid: int, message_id: str | None) -> None:
        key = f"{self._p}flags:{mailbox}"
        pipe = self._client.pipeline(transaction=True)
        pipe.zadd(key, {_flag_member(uidvalidity, uid, message_id): now_or_clock(None)}, nx=True)
        pipe.pexpire(key, int(self._retention_ms))
        pipe.execute()

    @_errors
    def pending_flags(self, mailbox: str, limit: int) -> list[FlagRequest]:
        if limit <= 0:
            return []
        rows = self._client.zrange(f"{self._p}flags:{mailbox}", 0, limit - 1, withscores=True)
        requests = []
        for member, score in rows:
            uidvalidity, uid, message_id = member.split(":", 2)
            requests.append(FlagRequest(mailbox, int(uidvalidity), int(uid), message_id or None, float(score)))
        return requests

    @_errors
    def clear_flag(self, request: FlagRequest) -> None:
        member = _flag_member(request.uidvalidity, request.uid, request.message_id)
        pipe = self._client.pipeline(transaction=True)
        pipe.zrem(f"{self._p}flags:{request.mailbox}", member)
        pipe.hdel(f"{self._p}flag_failures:{request.mailbox}", member)
        pipe.execute()

    # --- fetch retries, flag failures, identities (issue 15) -------------------------------------------------

    @_errors
    def flag_failed(self, request: FlagRequest) -> int:
        """Count one failed application of ``request``; returns its failures so far (0 if it is gone)."""
        member = _flag_member(request.uidvalidity, request.uid, request.message_id)
        if self._client.zscore(f"{self._p}flags:{request.mailbox}", member) is None:
            return 0
        key = f"{self._p}flag_failures:{request.mailbox}"
        pipe = self._client.pipeline(transaction=True)
        pipe.hincrby(key, member, 1)
        pipe.pexpire(key, int(self._retention_ms))
        return int(pipe.execute()[0])

    def _fetch_key(self, mailbox: str, uidvalidity: int) -> str:
        return f"{self._p}fetch_retry:{mailbox}:{int(uidvalidity)}"

    @_errors
    def record_fetch_failure(self, mailbox: str, uidvalidity: int, uid: int, error: str) -> int:
        """Count one failed fetch of a UID (durably, across sessions); returns its failures so far."""
        key = self._fetch_key(mailbox, uidvalidity)
        pipe = self._client.pipeline(transaction=True)
        pipe.hincrby(key, str(int(uid)), 1)
        pipe.pexpire(key, int(self._retention_ms))
        return int(pipe.execute()[0])

    @_errors
    def fetch_retries(self, mailbox: str, uidvalidity: int, limit: int) -> list[tuple[int, int]]:
        """The UIDs of the retry set, lowest first, with their failures so far."""
        counts = self._client.hgetall(self._fetch_key(mailbox, uidvalidity))
        rows = sorted((int(uid), int(n)) for uid, n in counts.items())
        return rows[:max(0, int(limit))]

    @_errors
    def clear_fetch_failure(self, mailbox: str, uidvalidity: int, uid: int) -> None:
        self._client.hdel(self._fetch_key(mailbox, uidvalidity), str(int(uid)))

    @_errors
    def remember_identity(self, email_id: str, fingerprint: str, uidvalidity: int, uid: int) -> None:
        """Record the fingerprint and origin of the first email seen under ``email_id`` (kept as done records)."""
        record = dumps({"fingerprint": fingerprint, "uidvalidity": int(uidvalidity), "uid": int(uid)})
        self._client.set(f"{self._p}identity:{email_id}", record, nx=True, px=int(self._retention_ms))

    @_errors
    def get_identity(self, email_id: str) -> dict | None:
        raw = self._client.get(f"{self._p}identity:{email_id}")
        return None if raw is None else json.loads(raw)

    # --- parked emails (issue 15) ------------------------------------------------------------------------------

    def _parked_key(self, parked_id: str) -> str:
        return f"{self._p}parked:{parked_id}"

    @_errors
    def park(self, parked: ParkedEmail) -> None:
        """Record (or re-record, with its new reason) an email that could not reach an end state."""
        at = parked.parked_at or now_or_clock(None)
        key = self._parked_key(parked.parked_id)
        old = self._client.hgetall(key)
        record = replace(parked, parked_at=at, replay_requested_at=None,
                         email_id=parked.email_id or old.get("email_id"),
                         subject=parked.subject if parked.subject is not None else old.get("subject"),
                         message_id=parked.message_id or old.get("message_id"))
        fields_ = {name: str(value) for name, value in record.__dict__.items() if value is not None}
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=fields_)
        pipe.pexpire(key, int(self._retention_ms))
        pipe.zadd(self._parked_index, {parked.parked_id: at})
        pipe.zrem(f"{self._p}parked_replay:{parked.mailbox_id}", parked.parked_id)
        pipe.execute()

    def _read_parked(self, ids: list[str]) -> list[ParkedEmail]:
        if not ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for parked_id in ids:
            pipe.hgetall(self._parked_key(parked_id))
        return [_parked_from(fields_) for fields_ in pipe.execute() if fields_]

    @_errors
    def get_parked(self, parked_id: str) -> ParkedEmail | None:
        found = self._read_parked([parked_id])
        return found[0] if found else None

    @_errors
    def list_parked(self, limit: int = 20) -> list[ParkedEmail]:
        """Newest first."""
        if limit <= 0:
            return []
        return self._read_parked(self._client.zrevrange(self._parked_index, 0, limit - 1))

    @_errors
    def parked_count(self) -> int:
        self._client.zremrangebyscore(self._parked_index, "-inf", "(" + self._cutoff(now_or_clock(None)))
        return int(self._client.zcard(self._parked_index))

    @_errors
    def request_replay(self, parked_id: str | None = None, now: float | None = None, *,
                       since: float | None = None) -> int:
        """Ask the mailbox's lease holder to re-run the pipeline on one parked email (or all, or those parked at or
        after ``since``); returns how many."""
        at = now_or_clock(now)
        if parked_id is not None:
            ids = [parked_id]
        elif since is not None:
            ids = self._client.zrangebyscore(self._parked_index, _num(since), "+inf")
        else:
            ids = self._client.zrange(self._parked_index, 0, -1)
        requested = 0
        for record in self._read_parked(ids):
            if since is not None and record.parked_at < since:
                continue
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(self._parked_key(record.parked_id), "replay_requested_at", _num(at))
            pipe.hdel(self._parked_key(record.parked_id), "replay_refused")
            pipe.zadd(f"{self._p}parked_replay:{record.mailbox_id}", {record.parked_id: at})
            pipe.execute()
            requested += 1
        return requested

    @_errors
    def replay_requests(self, mailbox_id: str, limit: int) -> list[ParkedEmail]:
        if limit <= 0:
            return []
        key = f"{self._p}parked_replay:{mailbox_id}"
        ids = self._client.zrange(key, 0, limit - 1)
        found = self._read_parked(ids)
        gone = set(ids) - {record.parked_id for record in found}
        if gone:
            self._client.zrem(key, *gone)
        return [record for record in found if record.replay_requested_at is not None]

    @_errors
    def unpark(self, parked_id: str) -> None:
        record = self.get_parked(parked_id)
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self._parked_key(parked_id))
        pipe.zrem(self._parked_index, parked_id)
        if record is not None:
            pipe.zrem(f"{self._p}parked_replay:{record.mailbox_id}", parked_id)
        pipe.execute()

    @_errors
    def refuse_replay(self, parked_id: str, why: str) -> None:
        record = self.get_parked(parked_id)
        if record is None:
            return
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(self._parked_key(parked_id), "replay_requested_at")
        pipe.hset(self._parked_key(parked_id), "replay_refused", bounded(why) or "")
        pipe.zrem(f"{self._p}parked_replay:{record.mailbox_id}", parked_id)
        pipe.execute()

    # --- R2 reuse ----------------------------------------------------------------------------------------------

    def _r2_key(self, source_url: str) -> str:
        return f"{self._p}r2:{hashlib.sha256(source_url.encode('utf-8')).hexdigest()}"

    @_errors
    def get_r2_copy(self, source_url: str) -> dict | None:
        raw = self._client.get(self._r2_key(source_url))
        return None if raw is None else json.loads(raw)

    @_errors
    def put_r2_copy(self, source_url: str, record: dict, ttl_seconds: float) -> None:
        self._client.set(self._r2_key(source_url), dumps(record), px=max(1, int(ttl_seconds * 1000)))

    # --- counters ----------------------------------------------------------------------------------------------

    @_errors
    def incr(self, name: str, amount: int = 1, label: str | None = None,
             labels: Mapping[str, str] | None = None) -> None:
        check_counter_name(name)
        part = counter_label_part(counter_labels(label, labels))
        self._client.hincrby(self._counters, f"{name}:{part}" if part else name, int(amount))

    @_errors
    def counter_series(self) -> list[tuple[str, dict[str, str], int]]:
        """Every counter with its labels (``services.state_store.counter_label_part`` is the key format)."""
        series = []
        for field_name, value in self._client.hgetall(self._counters).items():
            name, _, part = field_name.partition(":")
            series.append((name, parse_label_part(part), int(value)))
        return series

    def counters(self) -> dict[str, int | dict[str, int]]:
        return fold_series(self.counter_series())

    # --- status and recent history -----------------------------------------------------------------------------

    @_errors
    def publish_status(self, doc: dict, ttl_seconds: float) -> None:
        stored = {**doc, "published_at": now_or_clock(None)}
        self._client.set(self._status, dumps(stored), px=max(1, int(ttl_seconds * 1000)))

    @_errors
    def publish_mailbox_status(self, mailbox_id: str, doc: dict, ttl_seconds: float) -> None:
        stored = {**doc, "published_at": now_or_clock(None)}
        self._client.set(f"{self._p}status:mailbox:{mailbox_id}", dumps(stored), px=max(1, int(ttl_seconds * 1000)))

    @_errors
    def read_mailbox_statuses(self, mailbox_ids: Sequence[str]) -> dict[str, dict]:
        ids = list(mailbox_ids)
        if not ids:
            return {}
        raws = self._client.mget([f"{self._p}status:mailbox:{mailbox_id}" for mailbox_id in ids])
        return {mailbox_id: json.loads(raw) for mailbox_id, raw in zip(ids, raws, strict=True) if raw is not None}

    @_errors
    def target_stats(self, now: float) -> dict[str, dict]:
        """Per target: pending (not held), held, the oldest pending age, the oldest due item's due time and
        scheduled delay (as ``outbox_stats``), dead letters within the retention (reads the fields of every pending
        and recent dead item: the sets are small in a working service)."""
        return self.outbox_breakdown(now)["targets"]

    @_errors
    def outbox_breakdown(self, now: float) -> dict[str, dict]:
        """``target_stats(now)`` as "targets" and ``pending_owners()["mailboxes"]`` as "mailboxes", from one pass
        over the pending items."""
        found = self._pending_pass(now)
        stats = found.targets
        for (target_id, (_, due_at)), delay in zip(found.due_heads.items(), self._scheduled_delays(
                [event_id for event_id, _ in found.due_heads.values()]), strict=True):
            stats[target_id]["oldest_due_at"] = due_at
            stats[target_id]["oldest_due_delay"] = delay
        dead_ids = self._client.zrangebyscore(self._dead, self._cutoff(now), "+inf")
        for start in range(0, len(dead_ids), 500):
            pipe = self._client.pipeline(transaction=False)
            for event_id in dead_ids[start:start + 500]:
                pipe.hget(self._item_key(event_id), "target_id")
            for target_id in pipe.execute():
                _target_entry(stats, target_id)["dead"] += 1
        return {"targets": stats, "mailboxes": found.mailbox_counts}

    def _pending_pass(self, now: float) -> _PendingPass:
        """Read the fields of every pending and enriching item once (500 to a round trip) into a ``_PendingPass``."""
        found = _PendingPass(now)
        # (event id, its score in outbox:pending: when claimable next), in claim order; an enriching item is not due
        queued = self._client.zrange(self._pending, 0, -1, withscores=True)
        queued += [(event_id, None) for event_id in self._client.zrange(self._enriching, 0, -1)]
        for start in range(0, len(queued), 500):
            chunk = queued[start:start + 500]
            pipe = self._client.pipeline(transaction=False)
            for event_id, _ in chunk:
                pipe.hmget(self._item_key(event_id), "status", "mailbox_id", "target_id", "held_until", "created_at")
                pipe.zscore(self._pending_since, event_id)
            answers = pipe.execute()
            for (event_id, due_at), fields, since in zip(chunk, answers[::2], answers[1::2], strict=True):
                found.add(event_id, due_at, fields, since)
        return found

    @_errors
    def read_status(self) -> dict | None:
        raw = self._client.get(self._status)
        return None if raw is None else json.loads(raw)

    @_errors
    def record_recent(self, entry: dict) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.lpush(self._recent, dumps(entry))
        pipe.ltrim(self._recent, 0, RECENT_KEEP - 1)
        pipe.pexpire(self._recent, int(self._retention_ms))
        pipe.execute()

    @_errors
    def recent(self, limit: int = 20) -> list[dict]:
        if limit <= 0:
            return []
        return [json.loads(raw) for raw in self._client.lrange(self._recent, 0, min(limit, RECENT_KEEP) - 1)]

    # --- retention ---------------------------------------------------------------------------------------------

    @_errors
    def trim(self, now: float) -> None:
        """Drop index entries older than the retention (the keys themselves expire by their TTL)."""
        cutoff = "(" + self._cutoff(now)
        pipe = self._client.pipeline(transaction=False)
        pipe.zremrangebyscore(self._delivered, "-inf", cutoff)
        pipe.zremrangebyscore(self._dead, "-inf", cutoff)
        pipe.zremrangebyscore(self._parked_index, "-inf", cutoff)
        pipe.execute()
        for key in self._client.scan_iter(match=f"{self._p}flags:*", count=100):
            self._client.zremrangebyscore(key, "-inf", cutoff)

    def close(self) -> None:
        if self._owns_client:
            try:
                self._client.close()
            except (redis.RedisError, OSError):  # closing must not fail a shutdown
                logger.debug("redis close failed", exc_info=True)
