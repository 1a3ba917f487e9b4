#!/usr/bin/env python3
"""render-signal in one command (`make demo`): the whole product on loopback, a handful of realistic emails, and
every webhook as it arrives.

Starts a real Dovecot mailbox, a real Redis, the Cloudflare Worker on Miniflare (workerd) with a local R2 bucket, a
local file server playing Dropbox/WeTransfer, a webhook receiver (in this process), and two service instances (two
Gunicorn masters, two workers each) in front of the one Redis. Then it drops four emails into the mailbox (a Dropbox
folder link, a WeTransfer link, a > 1 MB HTML newsletter, and one from a sender outside the allow-list), prints each
webhook (pretty JSON; the R2 copy is downloaded and compared with the source bytes), the service's notable log lines
and the status route (/api/status with its token). It stops everything on Ctrl-C, SIGTERM, or after --timeout
seconds (default 90), and checks that nothing is left running.

    .venv/bin/python -m scripts.demo [--timeout 90] [--stay]

--stay keeps the cluster up until Ctrl-C / the timeout once the emails are done (to open the dashboard).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import time
from typing import TYPE_CHECKING

from harness.cluster import (
    Cluster,
    MissingRuntime,
    dropbox_file_link,
    dropbox_folder_link,
    expected_bytes,
    leftover_processes,
    wetransfer_link,
)
from harness.mail import event_id_of, make_email

if TYPE_CHECKING:
    from services.state_store import StateStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STARTED = time.monotonic()


def say(message: str = "") -> None:
    print(f"[{time.monotonic() - STARTED:5.1f}s] {message}" if message else "", flush=True)


class Stop(Exception):
    pass


def _on_signal(signum, frame) -> None:  # noqa: ANN001 - the signal module's handler signature
    raise Stop(signal.Signals(signum).name)


def newsletter_html(link: str, size: int = 1_300_000) -> str:
    """A big marketing-style HTML newsletter (over the service's 1 MB HTML cap), the delivery link near the top."""
    head = ('<html><head><style>td{font-family:Arial}</style></head><body><table width="600">'
            '<tr><td><h1>Studio Weekly</h1><p>This week\'s showreel is ready: '
            f'<a href="{link}">download the reel</a></p></td></tr>')
    row = ('<tr><td class="story"><img src="https://cdn.example.com/img/story.png" width="560" alt="">'
           '<p>Behind the scenes of our latest grade: colour pipelines, LUTs, and a coffee machine that '
           'finally works. Read more in the full story on our blog.</p></td></tr>')
    rows = []
    total = len(head)
    while total < size:
        rows.append(row)
        total += len(row)
    return head + "".join(rows) + "</table></body></html>"


def build_emails() -> list[tuple[str, bytes, str]]:
    """(label, raw bytes, expected outcome)."""
    from datetime import datetime, timezone
    from email.message import EmailMessage
    from email.utils import format_datetime, make_msgid

    emails = []
    emails.append(("Dropbox folder link", make_email(
        subject="Final grade - project files (folder)", sender="Maya Colorist <maya@example.com>",
        links=[dropbox_folder_link("demoF0ld3r")],
        extra_text="All deliverables are in the folder, zipped by Dropbox.\nMaya"), "webhook, R2 copy (zip)"))
    emails.append(("WeTransfer link", make_email(
        subject="Sound mix v2 via WeTransfer", sender="Leo Audio <leo@example.com>",
        links=[wetransfer_link("demo42")], extra_text="Stems and the stereo mix.\nLeo"),
        "webhook, source URL kept (WeTransfer is not offloaded)"))
    news = EmailMessage()
    news["From"] = "Studio Weekly <newsletter@example.com>"
    news["To"] = "bot@example.com"
    news["Subject"] = "Studio Weekly #128 - showreel inside"
    news["Date"] = format_datetime(datetime.now(timezone.utc))
    news["Message-ID"] = make_msgid(domain="news.example.com")
    link = dropbox_file_link("demoR33l")
    news.set_content(f"Studio Weekly: this week's showreel {link}\n")
    news.add_alternative(newsletter_html(link), subtype="html")
    emails.append(("huge HTML newsletter (1.3 MB of HTML)", news.as_bytes(),
                   "webhook; HTML truncated at 1 MB (WARNING)"))
    emails.append(("sender outside the allow-list", make_email(
        subject="You won a free cruise!", sender="Promo <promo@spam.test>",
        links=[dropbox_file_link("demoSpam")]), "skipped: sender_not_allowed"))
    return emails


def shorten(value, limit: int = 160):
    if isinstance(value, dict):
        return {key: shorten(item, limit) for key, item in value.items()}
    if isinstance(value, list):
        return [shorten(item, limit) for item in value]
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"... ({len(value)} chars)"
    return value


def show_webhook(event: dict, label: str, t_append: float) -> None:
    headers = event["headers"]
    body = event["json"] or {}
    say(f"WEBHOOK for '{label}' ({event['received_at'] - t_append:.2f}s after APPEND), answered "
        f"{event['status_answered']}")
    shown = {"headers": {name: (headers.get(name) or "")[:60] for name in
                         ("webhook-id", "webhook-timestamp", "webhook-signature", "user-agent")},
             "body": shorten(body)}
    print(json.dumps(shown, indent=2, ensure_ascii=False), flush=True)
    for link in body.get("delivery_links", []):
        if link.get("r2_url"):
            import requests

            answer = requests.get(link["r2_url"], timeout=10)
            expected = expected_bytes(link["direct_url"])
            ok = answer.status_code == 200 and expected is not None and answer.content == expected
            say(f"  R2 URL {link['r2_url']}\n           serves {len(answer.content)} bytes, sha256 "
                f"{hashlib.sha256(answer.content).hexdigest()[:16]}..., "
                f"{'SAME BYTES as the source' if ok else 'MISMATCH with the source!'}"
                f" ({answer.headers.get('Content-Type')})")
        else:
            say(f"  {link['provider']}: no R2 copy, the webhook carries the source URL {link['direct_url']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=90.0, help="stop everything after this many seconds")
    parser.add_argument("--stay", action="store_true", help="keep running until Ctrl-C or the timeout")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    deadline = STARTED + args.timeout

    say(f"render-signal demo: everything on 127.0.0.1, stops by itself after {args.timeout:.0f}s or on Ctrl-C")
    cluster = Cluster(instances=2, workers=2, use_redis=True, r2=True, log=say,
                      env_overrides={"R2_FETCH_TIMEOUT_FOLDER_SECONDS": "15", "R2_FETCH_TIMEOUT_SECONDS": "10"})
    code = 0
    try:
        try:
            cluster.start()
        except MissingRuntime as exc:
            say(f"cannot start: {exc}")
            return 2
        code = _run(cluster, args.stay, deadline)
    except Stop as exc:
        say(f"{exc}: stopping")
        code = 130
    finally:
        code = _teardown(cluster, code)
    return code


def _run(cluster: Cluster, stay: bool, deadline: float) -> int:
    """The demo on a started cluster: 1 if an email never reached its outcome before ``deadline``, else 0."""
    for index, service in enumerate(cluster.services):
        say(f"service instance {index + 1}: {service.url} (workers {service.worker_pids()})")
    say(f"lease holder: {cluster.holder_token()}")
    say("")
    pending = _append_emails(cluster)
    say(f"{len(pending)} emails waiting in the mailbox")
    say("")
    _wait_for_outcomes(cluster, pending, deadline)
    code = 0
    if pending:
        say(f"timeout: {len(pending)} email(s) never finished: {[v[0] for v in pending.values()]}")
        code = 1
    say("")
    _show_notable_log_lines(cluster)
    say("")
    time.sleep(1.5)  # let the holder publish its status after the last delivery
    say(f"GET /api/status (Authorization: Bearer <STATUS_API_TOKEN>) on {cluster.services[0].url}:")
    status = cluster.status()
    print(json.dumps(shorten(status, 120), indent=2), flush=True)
    if stay:
        say(f"--stay: dashboard at {cluster.services[0].url}/ (any user, password = the status token "
            f"{cluster.status_token}); Ctrl-C to stop")
        while time.monotonic() < deadline:
            time.sleep(0.5)
    return code


def _append_emails(cluster: Cluster) -> dict[str, tuple[str, float, str]]:
    """APPEND the demo emails; returns event id -> (label, when appended, expected outcome)."""
    pending: dict[str, tuple[str, float, str]] = {}
    for label, raw, outcome in build_emails():
        t_append = time.time()
        cluster.append(raw)
        pending[event_id_of(raw)] = (label, t_append, outcome)
        say(f"APPEND '{label}' ({len(raw) / 1024:.0f} KiB) -> expect {outcome}")
    return pending


def _wait_for_outcomes(cluster: Cluster, pending: dict[str, tuple[str, float, str]], deadline: float) -> None:
    """Show each webhook and each skip as it happens, removing the email from ``pending``, until none is left or
    ``deadline``."""
    store = cluster.store()
    shown: set[str] = set()
    last_report = 0.0
    while pending and time.monotonic() < deadline:
        _show_new_webhooks(cluster, pending, shown)
        _show_skips(store, pending)
        if pending and time.monotonic() - last_report > 2:
            last_report = time.monotonic()
            say(f"{len(pending)} email(s) still waiting ...")
        time.sleep(0.1)


def _show_new_webhooks(cluster: Cluster, pending: dict[str, tuple[str, float, str]], shown: set[str]) -> None:
    assert cluster.receiver is not None  # the cluster started
    for event in cluster.receiver.delivered():
        webhook_id = event["headers"].get("webhook-id")
        if webhook_id in pending and webhook_id not in shown:
            shown.add(webhook_id)
            label, t_append, _ = pending.pop(webhook_id)
            show_webhook(event, label, t_append)


def _show_skips(store: StateStore, pending: dict[str, tuple[str, float, str]]) -> None:
    for event_id in list(pending):
        done = store.get_done(event_id[len("msg_"):])
        if done and done.startswith("skipped:"):
            label, t_append, _ = pending.pop(event_id)
            say(f"SKIPPED '{label}': no webhook, done record '{done}' (flagged done on the server)")


def _show_notable_log_lines(cluster: Cluster) -> None:
    say("notable service log lines (WARNING and R2):")
    for line in cluster.service_logs().splitlines():
        if ("HTML content truncated" in line or "R2_TRANSFER" in line or "skipped uid" in line
                or "acquired" in line.lower() and "lease" in line.lower()):
            print("    " + line[:220], flush=True)


def _teardown(cluster: Cluster, code: int) -> int:
    """Stop the cluster and check that nothing it started is left; returns ``code``, or 1 for a leftover."""
    say("stopping: service instances (SIGTERM), receiver, Worker, file server, Redis, Dovecot ...")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
    seen = cluster.stop()
    left = leftover_processes(seen)
    if cluster.stop_errors:
        say(f"teardown errors: {cluster.stop_errors}")
    if left:
        say(f"LEFT RUNNING: {left}")
        return code or 1
    say(f"stopped: all {len(seen)} processes the demo started are gone")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
