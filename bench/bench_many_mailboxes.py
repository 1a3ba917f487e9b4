"""Benchmarks of issue 17: many mailboxes on one instance, a burst to a slow receiver, failover of a cluster.

All on loopback with real servers (Dovecot, redis-server, Gunicorn masters, the test receiver), started and stopped
by this process (``bench.bench_latency.Harness``). The service reads a configuration file (RENDER_SIGNAL_CONFIG).

- ``mailboxes``: 50 mailboxes on one instance (2 workers × 4 threads, Redis): RSS and threads per worker, IMAP
  connections to Dovecot (goal: exactly one per mailbox), and APPEND → webhook latency per mailbox (3 emails each,
  appended 0.2 s apart across mailboxes; goal: p95 ≤ 1.5 s for every mailbox).
- ``burst``: 500 emails in one mailbox, a receiver that answers after 250 ms, target concurrency 16: time from the
  first APPEND until every webhook is delivered and every email flagged done (goal ≤ 12 s).
- ``failover``: 12 mailboxes on two masters × 2 workers; the master holding the most is killed (SIGKILL); time until
  every mailbox is held by a live worker (goal ≤ TTL + retry + 2 s).

    .venv/bin/python -m bench.bench_many_mailboxes [--only mailboxes|burst|failover]
"""

from __future__ import annotations

import argparse
import os
import re
import time

from bench.bench_latency import Harness, percentile, result

TTL = 3.0
RETRY = 0.5
HOLDER_PID = re.compile(r"pid=(\d+)")


def config_text(accounts, targets: dict[str, str], concurrency: int = 4, poll: float = 30.0) -> str:
    lines = ["mailboxes:"]
    for n, account in enumerate(accounts):
        lines += [f"  - id: {'default' if n == 0 else f'box-{n:02d}'}", f"    server: {account.host}",
                  f"    port: {account.ssl_port}", "    tls: implicit", f"    ca_file: {account.ca_file}",
                  f"    user: {account.user}", f"    password: ${{PW_{n}}}", f"    poll_interval_seconds: {poll:g}"]
    lines.append("targets:")
    for name, url in targets.items():
        lines += [f"  - id: {name}", f"    url: {url}", "    allow_insecure: true", "    timeout_seconds: 10",
                  f"    concurrency: {concurrency}", "    retry: {schedule: [1, 2, 5], hours: 1}"]
    return "\n".join(lines) + "\n"


def service_env(h: Harness, accounts, text: str, redis_url: str) -> dict[str, str]:
    path = os.path.join(h.tempdir("many-config-"), "render-signal.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return {"RENDER_SIGNAL_CONFIG": path, "REDIS_URL": redis_url, "REDIS_LOCK_TTL_SECONDS": str(TTL),
            "LEASE_RETRY_SECONDS": str(RETRY), "STATE_DIR": h.tempdir("many-state-"),
            **{f"PW_{n}": account.password for n, account in enumerate(accounts)}}


def lease_key(mailbox_id: str) -> str:
    return "render_signal:poller_lock" if mailbox_id == "default" else f"render_signal:poller_lock:{mailbox_id}"


def holders(client, ids) -> dict[str, str | None]:
    out = {}
    for mailbox_id, value in zip(ids, client.mget([lease_key(m) for m in ids]), strict=True):
        match = HOLDER_PID.search(value or "")
        out[mailbox_id] = match.group(1) if match else None
    return out


def wait(check, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        return dict(line.split(":", 1) for line in handle if ":" in line)


def connections_to(pids: list[int], port: int) -> int:
    """Established TCP connections from ``pids`` to 127.0.0.1:``port`` (from /proc: socket inodes and net/tcp)."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    with open("/proc/net/tcp", encoding="ascii") as handle:
        next(handle)
        for line in handle:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state == "01" and int(remote.split(":")[1], 16) == port and inode in inodes:
                count += 1
    return count


def bench_mailboxes(count: int = 50) -> None:
    import redis

    from harness.mail import make_email

    with Harness() as h:
        dovecot, redis_server, receiver = h.dovecot(), h.redis(), h.receiver()
        accounts = [dovecot.new_account("many") for _ in range(count)]
        ids = ["default", *(f"box-{n:02d}" for n in range(1, count))]
        env = service_env(h, accounts, config_text(accounts, {"default": receiver.url}), redis_server.url)
        service = h.service(env, workers=2, threads=4)
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        h.on_close("redis client", client.close)
        settle = wait(lambda: all(holders(client, ids).values()), 60, "every mailbox held")
        time.sleep(2 * TTL + 2)  # hand-overs between the two workers settle
        appenders = {}
        for account in accounts:
            appenders[account.user] = dovecot.client(account.user, tls=False)
            h.on_close("appender", appenders[account.user].logout)
        sent: dict[str, tuple[int, float]] = {}
        for round_number in range(3):
            for n, account in enumerate(accounts):
                subject = f"many {round_number}-{n}"  # the key: a mailbox's event ids carry its id
                raw = make_email(subject=subject)
                t0 = time.time()
                appenders[account.user].append("INBOX", raw)
                sent[subject] = (n, t0)
                time.sleep(0.2)
        receiver.wait_for(len(sent), timeout=120)
        received = {event["json"]["subject"]: event["received_at"] for event in receiver.delivered()}
        per_mailbox: dict[int, list[float]] = {}
        for subject, (n, t0) in sent.items():
            per_mailbox.setdefault(n, []).append(received[subject] - t0)
        everything = [value for values in per_mailbox.values() for value in values]
        worst_p95 = max(percentile(values, 95) for values in per_mailbox.values())
        pids = service.worker_pids()
        statuses = [proc_status(pid) for pid in pids]
        rss = [int(status["VmRSS"].split()[0]) / 1024 for status in statuses]
        threads = [int(status["Threads"]) for status in statuses]
        imap = connections_to(pids, dovecot.ssl_port)
        held = holders(client, ids)
        share = {pid: sum(1 for value in held.values() if value == str(pid)) for pid in pids}
    print(f"{count} mailboxes, one instance (2 workers x 4 threads, Redis), held after {settle:.1f} s, "
          f"per worker {share}")
    print(f"  RSS per worker {', '.join(f'{value:.0f} MiB' for value in rss)}; threads per worker "
          f"{', '.join(map(str, threads))}; IMAP connections to Dovecot {imap} (mailboxes {count})")
    print(f"  APPEND -> webhook over {len(everything)} emails: p50 {percentile(everything, 50) * 1000:.0f} ms, "
          f"p95 {percentile(everything, 95) * 1000:.0f} ms; worst mailbox p95 {worst_p95 * 1000:.0f} ms")
    result("many_mailboxes_worst_p95_s", round(worst_p95, 3), "s", goal="<= 1.5",
           p50_s=round(percentile(everything, 50), 3), p95_s=round(percentile(everything, 95), 3),
           rss_mib=[round(value) for value in rss], threads=threads, imap_connections=imap, mailboxes=count,
           details=(f"p50 {percentile(everything, 50):.3f} s, p95 {percentile(everything, 95):.3f} s over all "
                    f"{len(everything)} emails; RSS per worker {', '.join(f'{v:.0f}' for v in rss)} MiB; threads "
                    f"per worker {', '.join(str(t) for t in threads)}; {imap} IMAP connections for {count} "
                    "mailboxes"))


def bench_burst(count: int = 500) -> None:
    from harness.mail import make_email

    with Harness() as h:
        dovecot, redis_server, receiver = h.dovecot(), h.redis(), h.receiver()
        receiver.set_delay(0.25)
        account = dovecot.new_account("burst")
        env = service_env(h, [account], config_text([account], {"default": receiver.url}, concurrency=16, poll=5),
                          redis_server.url)
        h.service(env, workers=2, threads=4)
        appender = dovecot.client(account.user, tls=False)
        h.on_close("appender", appender.logout)
        appender.append("INBOX", make_email())  # warm-up: the lease is held and the poller in IDLE
        receiver.wait_for(1, timeout=60)
        time.sleep(1.0)
        raws = [make_email() for _ in range(count)]
        started = time.monotonic()
        for raw in raws:
            appender.append("INBOX", raw)
        appended = time.monotonic() - started
        receiver.wait_for(count + 1, timeout=120)
        delivered = time.monotonic() - started
        appender.select_folder("INBOX")
        wait(lambda: len(appender.search(["KEYWORD", "$RenderSignalDone"])) >= count + 1, 120, "all flagged")
        flagged = time.monotonic() - started
    print(f"burst of {count} emails to a receiver answering after 250 ms, target concurrency 16: appended in "
          f"{appended:.1f} s, all delivered after {delivered:.1f} s, all flagged done after {flagged:.1f} s")
    result("burst_500_slow_receiver_s", round(flagged, 2), "s", goal="<= 12", delivered_s=round(delivered, 2),
           appended_s=round(appended, 2),
           details=f"appended in {appended:.2f} s, all delivered after {delivered:.2f} s, all flagged done after "
                   f"{flagged:.2f} s")


def bench_failover(count: int = 12) -> None:
    import redis

    with Harness() as h:
        dovecot, redis_server, receiver = h.dovecot(), h.redis(), h.receiver()
        accounts = [dovecot.new_account("fail") for _ in range(count)]
        ids = ["default", *(f"box-{n:02d}" for n in range(1, count))]
        env = service_env(h, accounts, config_text(accounts, {"default": receiver.url}, poll=5), redis_server.url)
        masters = [h.service(env, workers=2, threads=2) for _ in range(2)]
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        h.on_close("redis client", client.close)
        wait(lambda: all(holders(client, ids).values()), 60, "every mailbox held")
        time.sleep(2 * TTL + 3)  # spread over the four workers
        held = holders(client, ids)
        by_master = [sum(1 for pid in held.values() if pid in {str(p) for p in master.worker_pids()})
                     for master in masters]
        victim = masters[by_master.index(max(by_master))]
        live = {str(pid) for master in masters if master is not victim for pid in master.worker_pids()}
        victim.kill9()
        took = wait(lambda: set(holders(client, ids).values()) <= live, 60, "taken over")
    print(f"failover: {max(by_master)} of {count} mailboxes on the killed master (SIGKILL), every mailbox held by a "
          f"live worker again after {took:.2f} s (TTL {TTL:g} s, retry {RETRY:g} s; goal <= {TTL + RETRY + 2:g} s)")
    result("failover_all_mailboxes_s", round(took, 2), "s", goal=f"<= {TTL + RETRY + 2:g}", ttl_s=TTL,
           retry_s=RETRY, moved=max(by_master),
           details=f"{max(by_master)} of {count} mailboxes on the killed master; TTL {TTL:g} s + retry {RETRY:g} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("mailboxes", "burst", "failover"))
    args = parser.parse_args()
    for name, run in (("mailboxes", bench_mailboxes), ("burst", bench_burst), ("failover", bench_failover)):
        if args.only in (None, name):
            run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
