#!/usr/bin/env python3
"""`make chaos`: the full-length chaos run (issue 10, item 4), outside CI; the tally goes to bench/CHAOS.md.

The stack of the e2e suite (harness/cluster.py): real Dovecot, real Redis, the Worker on Miniflare with a local
R2 bucket and a local file server playing Dropbox, a webhook receiver, two service instances (two Gunicorn masters,
two workers each) on one Redis, R2 on. 300 emails (about one in six must be skipped: a sender outside the allow-list
or no delivery link) are appended in bursts while, in turn: the lease holder's master is killed -9 (and restarted
25 s later, as Render restarts a crashed container), Redis is paused 25 s (longer than the 20 s lease TTL), Dovecot is
paused 30 s (3x IMAP_TIMEOUT_SECONDS), the receiver answers 503 for 30 s (3x WEBHOOK_TIMEOUT_SECONDS) and the Worker
hangs 30 s (3x R2_FETCH_TIMEOUT_SECONDS). Between faults the run waits until everything so far is settled.

Timeouts are production-like, not the e2e suite's scaled-down ones:
  IMAP_TIMEOUT_SECONDS=10, WEBHOOK_TIMEOUT_SECONDS=10, R2_FETCH_TIMEOUT_SECONDS=10, REDIS_TIMEOUT_SECONDS=3 (default),
  EMAIL_POLLING_INTERVAL_SECONDS=30 (default; IDLE picks mail up in about a second), WEBHOOK_RETRY_SCHEDULE default
  (5,30,120,...), R2 circuit defaults (5 failures, 60 s cooldown), REDIS_LOCK_TTL_SECONDS=20 (render.yaml uses 60;
  20 keeps a kill -9 takeover inside the 30 s fault window) with the default retry TTL/3.

    .venv/bin/python -m scripts.chaos [--emails 300] [--fault-seconds 30] [--output bench/CHAOS.md]

Exit code 0 when every check passed, 1 otherwise (the tally and the problems are written either way).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import time

from harness.cluster import Cluster, Mail, MissingRuntime, check_run, leftover_processes, wait_settled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ENV = {
    "IMAP_TIMEOUT_SECONDS": "10",
    "IMAP_RECONNECT_MAX_SECONDS": "30",
    "EMAIL_POLLING_INTERVAL_SECONDS": "30",
    "WEBHOOK_TIMEOUT_SECONDS": "10",
    "WEBHOOK_RETRY_SCHEDULE": "5,30,120,600,1800,3600",
    "R2_FETCH_TIMEOUT_SECONDS": "10",
    "R2_FETCH_TIMEOUT_FOLDER_SECONDS": "120",
    "R2_CIRCUIT_FAILURES": "5",
    "R2_CIRCUIT_COOLDOWN_SECONDS": "60",
    "REDIS_TIMEOUT_SECONDS": "3",
    "REDIS_LOCK_TTL_SECONDS": "20",
    "LEASE_RETRY_SECONDS": "",  # default: TTL/3
    "HEARTBEAT_INTERVAL_SECONDS": "60",
}
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


class Stop(Exception):
    pass


def _on_signal(signum, frame) -> None:  # noqa: ANN001 - the signal module's handler signature
    raise Stop(signal.Signals(signum).name)


def machine() -> str:
    """The machine, as bench/run_all.py describes it for RESULTS.md (one description for both reports)."""
    from bench.run_all import machine as describe_machine

    return ", ".join(f"{key}: {value}" for key, value in describe_machine())


def run(args: argparse.Namespace) -> tuple[dict, list[str], list[tuple[str, float, float]], str]:
    fault = args.fault_seconds
    cluster = Cluster(instances=2, workers=2, use_redis=True, r2=True, env_overrides=ENV, log=say)
    phases: list[tuple[str, float, float]] = []  # (phase, fault seconds, settle seconds)
    problems: list[str] = []
    tally: dict = {}
    leftovers: list[str] = []
    try:
        cluster.start()
        mail = Mail(cluster, "x")
        total = args.emails
        calm_first = total // 10
        calm_last = total // 15
        per_fault = (total - calm_first - calm_last) // 5
        calm_last = total - calm_first - 5 * per_fault

        def settle(phase: str, fault_seconds: float) -> None:
            took = wait_settled(cluster, mail.sent, phase, timeout=args.settle_timeout)
            phases.append((phase, fault_seconds, took))
            say(f"{phase}: all {len(mail.sent)} emails so far settled {took:.1f}s after the fault ended")

        say(f"calm: {calm_first} emails")
        mail.burst("calm", calm_first, over_seconds=5)
        settle("calm", 0.0)

        say(f"fault 1: kill -9 of the lease holder's master, {per_fault} emails, restart after {fault:.0f}s")
        half = per_fault // 3
        mail.burst("kill-9 holder", half)
        index, pid = cluster.kill_lease_holder()
        try:
            mail.burst("kill-9 holder", per_fault - half, over_seconds=fault)
        finally:
            cluster.restart(index)
        settle("kill-9 holder", fault)

        redis_seconds = min(fault, 25.0)
        say(f"fault 2: Redis paused {redis_seconds:.0f}s (TTL 20 s), {per_fault} emails")
        with cluster.redis_paused():
            mail.burst("redis paused", per_fault, over_seconds=redis_seconds)
        settle("redis paused", redis_seconds)

        say(f"fault 3: Dovecot paused {fault:.0f}s (IMAP timeout 10 s), {per_fault} emails around it")
        mail.burst("dovecot paused", per_fault // 2)
        with cluster.dovecot_paused():
            time.sleep(fault)
        mail.burst("dovecot paused", per_fault - per_fault // 2)
        settle("dovecot paused", fault)

        say(f"fault 4: receiver answers 503 for {fault:.0f}s (webhook timeout 10 s), {per_fault} emails")
        with cluster.receiver_failing(503):
            mail.burst("receiver 503", per_fault, over_seconds=fault)
        settle("receiver 503", fault)

        say(f"fault 5: the Worker hangs {fault:.0f}s (R2 timeout 10 s), {per_fault} emails")
        with cluster.worker_hung():
            mail.burst("worker hung", per_fault, over_seconds=fault)
        settle("worker hung", fault)

        say(f"calm: {calm_last} emails")
        mail.burst("calm after", calm_last, over_seconds=5)
        settle("calm after", 0.0)

        tally, problems = check_run(cluster, mail.sent, f"chaos: {len(mail.sent)} emails, five faults",
                                    flag_wait=60)
        for service in cluster.services:
            document = service.get("/health").json()
            if document["checks"]["poller"] == "down":
                problems.append(f"instance {service.port}: background thread dead: {document}")
        logs = cluster.service_logs()
        tally["log_counts"] = {needle: logs.count(needle) for needle in (
            "Traceback", "IMAP: timeout after", "IMAP: reconnect attempt", "WEBHOOK: retry",
            "R2_TRANSFER: fallback to source URL", "R2_TRANSFER: circuit open", "LeaseLost", "lost")}
    except Stop as exc:
        problems.append(f"interrupted by {exc}")
    except AssertionError as exc:
        problems.append(str(exc)[:4000])
    finally:
        say("stopping everything ...")
        seen = cluster.stop()
        leftovers = leftover_processes(seen)
        if cluster.stop_errors:
            problems.append(f"teardown errors: {cluster.stop_errors}")
        if leftovers:
            problems.append(f"processes left behind: {leftovers}")
        tally["graceful_sigterm_s"] = {str(port): round(seconds, 1)
                                       for port, seconds in getattr(cluster, "graceful_seconds", {}).items()}
        tally["processes_started"] = len(seen)
    return tally, problems, phases, cluster.service_logs() if problems else ""


def write_report(path: str, args: argparse.Namespace, tally: dict, problems: list[str],
                 phases: list[tuple[str, float, float]], elapsed: float) -> None:
    lines = [
        "# Chaos run (`make chaos`)",
        "",
        "Generated by `scripts/chaos.py` (issue 10, item 4); the e2e suite (`tests/e2e/test_e2e_chaos.py`) is the "
        "short",  # one line of the report, split here only for the line length
        "version that runs in CI. Figures come from one run on the machine below: compare ratios, not absolutes.",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine()}",
        "- Stack: real Dovecot 2.3 (IMAPS), real Redis 7, the Worker on Miniflare (workerd) with a local R2 bucket and",
        "  a loopback server playing Dropbox, an HTTP webhook receiver, two service instances (two Gunicorn masters,",
        "  2 workers x 2 threads) on one Redis, R2 on.",
        f"- Timeouts: {', '.join(f'{k}={v}' for k, v in ENV.items() if v)}, LEASE_RETRY_SECONDS=TTL/3.",
        f"- {args.emails} emails appended in bursts; faults of {args.fault_seconds:.0f} s (Redis: "
        f"{min(args.fault_seconds, 25.0):.0f} s); the run waits for everything to settle after each fault.",
        f"- Result: **{'PASS' if not problems else 'FAIL'}** in {elapsed / 60:.1f} min.",
        "",
        "## Tally",
        "",
        "| | |",
        "|---|---|",
    ]
    for key in ("emails", "expected_deliveries", "delivered", "duplicates", "possible_duplicates_counted",
                "skipped", "dead_letters", "with_r2_url", "max_latency_s", "max_latency_phase",
                "processes_started"):
        if key in tally:
            lines.append(f"| {key.replace('_', ' ')} | {tally[key]} |")
    lines += ["", "## Phases", "", "| phase | fault (s) | settled after the fault (s) | max APPEND→webhook (s) |",
              "|---|---|---|---|"]
    by_phase = tally.get("max_latency_by_phase_s", {})
    for phase, fault_seconds, took in phases:
        lines.append(f"| {phase} | {fault_seconds:.0f} | {took:.1f} | {by_phase.get(phase, '-')} |")
    lines += ["", "## Counters and log lines", "", "```json",
              json.dumps({"counters": tally.get("counters"), "log_counts": tally.get("log_counts"),
                          "graceful_sigterm_s": tally.get("graceful_sigterm_s")}, indent=2, sort_keys=True),
              "```", ""]
    if problems:
        lines += ["## Problems", ""] + [f"- {problem[:1500]}" for problem in problems] + [""]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emails", type=int, default=300)
    parser.add_argument("--fault-seconds", type=float, default=30.0)
    parser.add_argument("--settle-timeout", type=float, default=300.0)
    parser.add_argument("--output", default=os.path.join(ROOT, "bench", "CHAOS.md"))
    parser.add_argument("--log-dir", default=None, help="keep the service logs here when a check fails")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        tally, problems, phases, logs = run(args)
    except MissingRuntime as exc:
        say(f"cannot start: {exc}")
        return 2
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    elapsed = time.monotonic() - STARTED
    write_report(args.output, args, tally, problems, phases, elapsed)
    # Issue 10: the chaos tally also goes into bench/RESULTS.md (as its last section).
    from bench.run_all import refresh_chaos_section

    refresh_chaos_section(os.path.join(ROOT, "bench", "RESULTS.md"), args.output)
    say(f"tally: {json.dumps({k: v for k, v in tally.items() if k != 'counters'})}")
    if problems:
        log_dir = args.log_dir or os.path.join(ROOT, "var", "chaos-logs")
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, "services.log"), "w", encoding="utf-8") as handle:
            handle.write(logs)
        say(f"{len(problems)} problem(s); service logs in {log_dir}/services.log")
        for problem in problems:
            say(f"PROBLEM: {problem[:600]}")
    say(f"report written to {os.path.relpath(args.output, ROOT)} ({'PASS' if not problems else 'FAIL'}, "
        f"{elapsed / 60:.1f} min)")
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
