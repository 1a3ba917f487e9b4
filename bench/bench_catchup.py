"""Catching up 10,000 new messages after an outage (issue 15): time until every webhook is delivered, and the IMAP
commands the poller sent meanwhile, with the current cycle and with the search-per-batch loop of before the fix.

What runs (127.0.0.1, free ports, everything stopped in ``finally`` even on Ctrl-C/SIGTERM): a real Dovecot
(``harness.dovecot.DovecotServer``, IMAPS), a real webhook receiver (``harness.receiver.WebhookReceiver``) in this
process (TCP_NODELAY, payload contract check off: correctness is checked by the set of webhook ids instead), and the
service's background threads in this process (``harness.pipeline.RunningPipeline``, ``service_env``'s FAST
timings: polling every 1 s, IDLE on), SQLite state, file lease.

Scenario, once per variant, each on a fresh user and fresh state:
1. the service starts on the empty mailbox (first pass: the checkpoint is set) and is stopped: it "ran before";
2. while it is down, ``--messages`` (10,000) emails arrive: written straight into the Maildir
   (``DovecotServer.build_maildir``, unseen, without the done keyword), each a ``harness.mail.make_email`` with one
   Dropbox link;
   one SELECT from the benchmark then lets Dovecot index them (in a real outage that happened at delivery time), so
   the indexing is not in the measurement;
3. the service starts again; measured from just before ``start_background`` until the receiver has answered a
   webhook for every email (and, separately, until no flag request is left, i.e. all are flagged done).

Variants:
- ``current``: the code as it is (one ``UID SEARCH`` for everything after the checkpoint, then batches of 50);
- ``before``: ``MailboxPoller.run_cycle`` replaced, in this process only, by the current cycle with the search loop
  of the previous release (``git show 2915ce0:background/poller.py``, ``run_cycle``): ``uids_after(checkpoint, 50)``
  again after every batch, so one ``UID SEARCH`` per 50 messages, each answering every UID still ahead. Batches,
  parsing, queueing, retry set and flags are today's code in both variants: only the search loop differs.

Counting, without touching production code: ``MailboxClient``'s methods are wrapped (calls from the poller thread
``render-signal-poller`` only), and an audit hook on ``imaplib.send`` counts the tagged commands that thread actually
wrote on the wire, by verb (``UID SEARCH``, ``UID FETCH``, ``UID STORE``, ``NOOP``, ``IDLE``, ...). The "before"
search count is also computed (ceil(n / 50) + 1 searches for the catch-up itself) next to the measured one.

    .venv/bin/python -m bench.bench_catchup [--messages 10000] [--only current|before] [--timeout 240]
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import sys
import threading
import time
from collections import Counter
from typing import Any, Callable

from bench.bench_latency import Harness, result

POLLER_THREAD = "render-signal-poller"
COUNTED_METHODS = ("connect", "select", "capabilities", "search_uids", "uids_after", "fetch_meta", "fetch_full",
                   "fetch_partial", "add_flags", "noop", "idle_start", "idle_done")


# --- counting IMAP commands ----------------------------------------------------------------------------------


class ImapCounter:
    """Calls of ``MailboxClient`` methods and tagged IMAP commands on the wire, from the poller thread only."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()   # time spent inside each method (the poller thread waits on it)
        self.wire: Counter[str] = Counter()
        self.search_uids_returned = 0   # UIDs the server listed in all UID SEARCH answers together
        self.active = False
        self._lock = threading.Lock()
        self._originals: dict[str, Callable[..., Any]] = {}
        self._hooked = False

    def install(self) -> None:
        from services.imap_mailbox import MailboxClient

        for name in COUNTED_METHODS:
            original = getattr(MailboxClient, name)
            self._originals[name] = original
            setattr(MailboxClient, name, self._wrap(name, original))
        if not self._hooked:  # an audit hook cannot be removed: it stays, inert while ``active`` is false
            sys.addaudithook(self._audit)
            self._hooked = True

    def uninstall(self) -> None:
        from services.imap_mailbox import MailboxClient

        for name, original in self._originals.items():
            setattr(MailboxClient, name, original)
        self._originals.clear()
        self.active = False

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.seconds.clear()
            self.wire.clear()
            self.search_uids_returned = 0

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": dict(self.calls), "wire": dict(self.wire),
                    "seconds": {name: round(value, 3) for name, value in self.seconds.items()},
                    "search_uids_returned": self.search_uids_returned}

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        counter = self

        @functools.wraps(original)
        def counted(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            value = original(*args, **kwargs)
            if counter.active and threading.current_thread().name == POLLER_THREAD:
                with counter._lock:
                    counter.calls[name] += 1
                    counter.seconds[name] += time.perf_counter() - started
                    if name == "search_uids":
                        counter.search_uids_returned += len(value)
            return value

        return counted

    def _audit(self, event: str, args: tuple) -> None:
        if event != "imaplib.send" or not self.active or threading.current_thread().name != POLLER_THREAD:
            return
        imap, data = args
        if data == b"DONE\r\n":
            verb = "DONE (ends IDLE)"
        elif isinstance(data, bytes | bytearray) and data.startswith(imap.tagpre):
            # "<tag> UID SEARCH ..." or "<tag> NOOP": the verb, with its UID prefix when there is one
            words = bytes(data).split(b"\r\n", 1)[0].split(b" ")[1:3]
            verb = b" ".join(words if words[:1] == [b"UID"] else words[:1]).decode("ascii", "replace").upper()
        else:
            return  # the rest of a command already counted (its literals, its CRLF)
        with self._lock:
            self.wire[verb] += 1


# --- the search loop of the previous release -------------------------------------------------------------------


def run_cycle_searching_per_batch(self, client, state) -> int:
    """``MailboxPoller.run_cycle`` with the search loop of 2915ce0 (before the fix): ``uids_after(checkpoint, 50)``
    after every batch. The rest is the current cycle, so the two variants differ in the search loop only."""
    from background.poller import BATCH_SIZE

    self.status.update(last_cycle_at=time.time())
    self.guard.check_remote()
    self._apply_flags_isolated(client, state)
    client.noop()
    checkpoint = self.store.get_checkpoint(self.state_key, state.uidvalidity)
    if checkpoint is None:
        handled = self._first_pass(client, state)
        server_max = max(state.uidnext - 1, 0)
    else:
        # --- the loop of 2915ce0, verbatim but for the names of today's fields ---
        handled = 0
        while True:
            self.guard.check_remote()
            uids = client.uids_after(checkpoint, BATCH_SIZE)
            if not uids:
                break
            handled += self._process_batch(client, state, uids)
            checkpoint = uids[-1]
        # --- end of the old loop ---
        server_max = checkpoint
    return self.end_cycle(client, state, handled, server_max)


# --- one variant -----------------------------------------------------------------------------------------------


def receiver(h: Harness):
    """The test receiver, TCP_NODELAY on (see bench_latency.Harness.receiver), payload contract check off: 10,000
    schema validations would run under this process's GIL, beside the poller being measured."""
    from harness import receiver as receiver_module

    receiver_module._Handler.disable_nagle_algorithm = True
    hook = receiver_module.WebhookReceiver(contract=False)
    h.on_close("webhook receiver", hook.stop)
    return hook.start()


class Delivered:
    """2xx-answered webhooks, counted incrementally (the receiver's own wait_for rescans every event)."""

    def __init__(self, hook) -> None:
        self.hook = hook
        self.seen = 0
        self.ids: set[str] = set()
        self.answered = 0
        self.one_dropbox_link = 0   # webhooks whose payload carries exactly the email's one Dropbox link

    def poll(self) -> int:
        events = self.hook.events
        for event in events[self.seen:]:
            status = event["status_answered"]
            if status is not None and 200 <= status <= 299:
                self.answered += 1
                self.ids.add(event["headers"].get("webhook-id"))
                links = (event["json"] or {}).get("delivery_links") or []
                if [link.get("provider") for link in links] == ["dropbox"]:
                    self.one_dropbox_link += 1
        self.seen = len(events)
        return len(self.ids)


def new_mail(count: int) -> list[bytes]:
    """``count`` emails of ``harness.mail.make_email`` (multipart text + HTML, one Dropbox link each), each with its
    own number in Message-ID, subject and link. make_email takes ~1.3 ms per email here, so one is built and the
    others are copies with the number filled in, digit for digit (a quoted-printable soft line break inside the
    placeholder stays where it is, so every copy is as valid as the original)."""
    from harness.mail import make_email

    mark = "NNNNNN"
    template = make_email(subject=f"Delivery {mark}", message_id=f"<catchup-{mark}@bench.example>",
                          links=[f"https://www.dropbox.com/scl/fi/cu{mark}/render_{mark}.mov?rlkey=key{mark}&dl=0"])
    placeholder = re.compile(b"(?:=\r?\n)?".join([b"N"] * len(mark)))
    pieces = placeholder.split(template)
    holes = placeholder.findall(template)
    out = []
    for n in range(1, count + 1):
        number = b"%0*d" % (len(mark), n)
        filled = [_fill(hole, number) for hole in holes] + [b""]
        out.append(b"".join(piece + hole for piece, hole in zip(pieces, filled, strict=True)))
    return out


def _fill(hole: bytes, number: bytes) -> bytes:
    """The placeholder ``hole`` with its N's replaced by the digits of ``number``, soft line breaks kept."""
    digits = iter(number)
    return re.sub(b"N", lambda _: bytes([next(digits)]), hole)


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic()


def run_variant(variant: str, messages: int, timeout: float, counter: ImapCounter) -> dict[str, Any]:
    from background.poller import MailboxPoller
    from harness.mail import event_id_of
    from harness.pipeline import RunningPipeline, service_env

    with Harness() as h:
        dovecot = h.dovecot()
        account = dovecot.new_account(f"catchup-{variant}-")
        hook = receiver(h)
        env = service_env(account, hook, state_dir=h.tempdir("catchup-state-"))

        # 1. The service ran before: a first pass on the empty mailbox sets the checkpoint.
        first = RunningPipeline(env)
        h.on_close("first pipeline", first.stop)
        first.start()
        first.wait_until(lambda: first.runtime.poller_status.last_success_at is not None, 30, "first cycle")
        state_key = first.runtime.mailbox.state_key
        first.stop()

        # 2. While it is down, the new mail arrives (on disk: seconds, not 10,000 APPENDs).
        started = time.monotonic()
        raws = new_mail(messages)
        expected = {event_id_of(raw) for raw in raws}
        dovecot.build_maildir(account.user, raws, keyword=None, seen=False)
        build_s = time.monotonic() - started
        del raws
        # Dovecot indexes files written behind its back on the next SELECT; in a real outage that happened at
        # delivery time, so it happens here, before the measurement (a session of this thread, not counted).
        started = time.monotonic()
        uidvalidity = dovecot.uidvalidity(account.user)
        index_s = time.monotonic() - started

        # 3. It starts again: catch-up, counted and timed.
        original_cycle = MailboxPoller.run_cycle
        h.on_close("run_cycle", lambda: setattr(MailboxPoller, "run_cycle", original_cycle))  # after the stop
        if variant == "before":
            MailboxPoller.run_cycle = run_cycle_searching_per_batch  # type: ignore[method-assign]
        second = RunningPipeline(env)
        h.on_close("second pipeline", second.stop)
        checkpoint_before = second.store.get_checkpoint(state_key, uidvalidity)
        delivered = Delivered(hook)
        counter.reset()
        counter.active = True
        t0 = time.monotonic()
        second.start()
        t_delivered = wait_for(lambda: delivered.poll() >= messages, timeout, f"{messages} webhooks")
        at_delivered = counter.snapshot()
        t_flagged = wait_for(lambda: not sum(second.store.flag_keys().values()), timeout, "every flag applied", 0.2)
        at_flagged = counter.snapshot()
        counter.active = False
        time.sleep(0.5)
        delivered.poll()
        checkpoint_after = second.store.get_checkpoint(state_key, uidvalidity)
        second.stop()
        flagged = _count_flagged(dovecot, account.user)

    return {"variant": variant, "messages": messages, "build_s": build_s, "index_s": index_s,
            "delivered_s": t_delivered - t0,
            "flagged_s": t_flagged - t0, "at_delivered": at_delivered, "at_flagged": at_flagged,
            "webhooks_answered": delivered.answered, "one_dropbox_link": delivered.one_dropbox_link,
            "distinct_ids": len(delivered.ids),
            "missing": len(expected - delivered.ids), "unexpected": len(delivered.ids - expected),
            "flagged_done": flagged, "checkpoint_before": checkpoint_before, "checkpoint_after": checkpoint_after}


def _count_flagged(dovecot, user: str) -> int:
    client = dovecot.client(user, tls=False, timeout=30)
    try:
        client.select_folder("INBOX", readonly=True)
        return len(client.search(["KEYWORD", "$RenderSignalDone"]))
    finally:
        client.logout()


# --- report ----------------------------------------------------------------------------------------------------


def searches(snapshot: dict[str, Any]) -> int:
    return snapshot["wire"].get("UID SEARCH", 0)


def commands(snapshot: dict[str, Any]) -> int:
    return sum(count for verb, count in snapshot["wire"].items() if not verb.startswith("DONE"))


def report(run: dict[str, Any]) -> None:
    n = run["messages"]
    label = {"current": "current code (one search per cycle, then batches of 50)",
             "before": "BEFORE THE FIX, re-created in this process (2915ce0's loop: one search per batch of 50)"}
    print(f"\n{run['variant']}: {label[run['variant']]}")
    print(f"  {n:,} messages written to the Maildir in {run['build_s']:.2f} s, indexed by Dovecot (one SELECT) in "
          f"{run['index_s']:.2f} s; checkpoint {run['checkpoint_before']} before, {run['checkpoint_after']} after")
    print(f"  all webhooks delivered           {run['delivered_s']:7.2f} s   ({n / run['delivered_s']:.0f} messages/s;"
          f" {run['distinct_ids']:,} distinct ids, {run['missing']} missing, {run['unexpected']} unexpected, "
          f"{run['webhooks_answered'] - run['distinct_ids']} duplicates, {run['one_dropbox_link']:,} with their one "
          f"Dropbox link)")
    print(f"  all flag requests applied        {run['flagged_s']:7.2f} s   ({run['flagged_done']:,} messages carry "
          f"$RenderSignalDone)")
    for when in ("at_delivered", "at_flagged"):
        snap = run[when]
        print(f"  IMAP commands {when.replace('_', ' ')}: {commands(snap):,} "
              f"(UID SEARCH {searches(snap)}, UIDs listed in search answers {snap['search_uids_returned']:,}, "
              f"poller time in searches {snap['seconds'].get('search_uids', 0.0):.2f} s)")
        print("    on the wire: " + ", ".join(f"{verb} {count:,}" for verb, count in sorted(snap["wire"].items())))
        print("    MailboxClient calls: " + ", ".join(f"{name} {count:,}"
                                                      for name, count in sorted(snap["calls"].items())))


def figures(run: dict[str, Any]) -> dict[str, Any]:
    snap = run["at_delivered"]
    return {"messages": run["messages"], "seconds": round(run["delivered_s"], 3),
            "messages_per_second": round(run["messages"] / run["delivered_s"], 1),
            "flagged_seconds": round(run["flagged_s"], 3), "imap_commands": commands(snap),
            "imap_commands_by_kind": snap["wire"], "client_calls": snap["calls"], "searches": searches(snap),
            "search_uids_returned": snap["search_uids_returned"],
            "search_seconds": snap["seconds"].get("search_uids", 0.0), "client_seconds": snap["seconds"],
            "imap_commands_until_flagged": commands(run["at_flagged"]),
            "imap_commands_by_kind_until_flagged": run["at_flagged"]["wire"],
            "missing": run["missing"], "duplicates": run["webhooks_answered"] - run["distinct_ids"]}


def main() -> int:
    from background.poller import BATCH_SIZE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--only", choices=("current", "before"))
    parser.add_argument("--timeout", type=float, default=240.0, help="bound on each wait (delivered, flagged)")
    args = parser.parse_args()
    variants = [args.only] if args.only else ["current", "before"]
    print(f"catch-up of {args.messages:,} messages after an outage: real Dovecot (IMAPS), real receiver, the "
          f"service's background in this process (FAST timings, IDLE on, SQLite)")
    counter = ImapCounter()
    runs: dict[str, dict[str, Any]] = {}
    counter.install()
    try:
        for variant in variants:
            runs[variant] = run_variant(variant, args.messages, args.timeout, counter)
            report(runs[variant])
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        counter.uninstall()

    computed_before = math.ceil(args.messages / BATCH_SIZE) + 1   # one per batch, plus the one that finds nothing
    summary: dict[str, Any] = {"messages": args.messages, "batch_size": BATCH_SIZE,
                               "searches_before_computed": computed_before}
    for variant, run in runs.items():
        name = "catchup_current" if variant == "current" else "catchup_before_fix"
        doc = figures(run)
        result(name, doc.pop("seconds"), "s", **doc)
        summary[f"searches_{'after' if variant == 'current' else 'before'}"] = doc["searches"]
        summary[f"seconds_{'after' if variant == 'current' else 'before'}"] = round(run["delivered_s"], 3)
        summary[f"commands_{'after' if variant == 'current' else 'before'}"] = doc["imap_commands"]
    print(f"\nUID SEARCH commands until every webhook was delivered: before the fix (computed: ceil(n / "
          f"{BATCH_SIZE}) + the one that finds nothing) {computed_before}")
    print("  (measured counts also hold the search the poller makes before it idles, when that comes before the "
          "last webhook)")
    if "before" in runs:
        print(f"  before the fix (measured) {summary['searches_before']}")
    if "current" in runs:
        print(f"  current (measured)        {summary['searches_after']}")
    if "before" in runs and "current" in runs:
        summary["ratio"] = round(summary["searches_before"] / max(1, summary["searches_after"]), 1)
        summary["seconds_ratio"] = round(summary["seconds_before"] / summary["seconds_after"], 2)
        print(f"  ratio before/after        {summary['ratio']}x searches, {summary['seconds_ratio']}x time")
    result("catchup_searches", summary.get("searches_after"), "searches", **summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
