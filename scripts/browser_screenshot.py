"""Render the status page ``/`` in a real headless Chromium and save ``docs/dashboard.png`` (``make test-browser``).

Starts a small real stack on loopback with the test infrastructure (redis-server, Dovecot, the webhook receiver, the
service under Gunicorn), lets three emails go through (two delivered, one skipped), then points Debian's
``chromium`` at the page with the status token as Basic password and checks the screenshot is a real image.
Installs ``chromium`` with apt-get when it is missing (Debian; needs root). Everything started is stopped by PID.

    .venv/bin/python -m scripts.browser_screenshot [--out docs/dashboard.png] [--width 1280 --height 1100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOKEN = "screenshot-token"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit("chromium not found; install it with: apt-get install -y chromium")
    print("installing chromium with apt-get ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    path = shutil.which("chromium")
    if not path:
        raise SystemExit("chromium still not found after apt-get install")
    return path


def email(to: str, sender: str, subject: str, link: str | None) -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain="client.example")
    message.set_content(f"Hello,\n\n{link or 'no link in this one'}\n")
    return bytes(message)


def run_stack_and_screenshot(out: str, width: int, height: int) -> None:
    import requests

    from harness.binaries import find_binary
    from harness.dovecot import DovecotServer
    from harness.receiver import WebhookReceiver
    from harness.redis_server import RedisServer
    from harness.service import ServiceProcess

    chromium = find_chromium()
    redis_server = dovecot = receiver = service = None
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        redis_server = RedisServer(find_binary("redis-server", "redis-server")).start()
        dovecot = DovecotServer(find_binary("dovecot", "dovecot-imapd")).start()
        account = dovecot.new_account("studio")
        receiver = WebhookReceiver().start()
        env = {**account.settings_env(), "REDIS_URL": redis_server.url, "WEBHOOK_URL": receiver.url,
               "WEBHOOK_ALLOW_INSECURE": "true", "STATUS_API_TOKEN": TOKEN, "EMAIL_POLLING_INTERVAL_SECONDS": "1",
               "REDIS_LOCK_TTL_SECONDS": "6", "IMAP_TIMEOUT_SECONDS": "3"}
        service = ServiceProcess(env, workers=2, threads=2).start()
        mails = [
            ("Alice Martin <alice.martin@client.example>", "Final renders - episode 4",
             "https://www.dropbox.com/scl/fi/a1b2c3d4e5/ep4-final.mov?rlkey=abc&dl=0"),
            ("Bob Stone <bob@agency.example>", "Re: colour grade <v2>",
             "https://www.dropbox.com/scl/fo/f9e8d7c6b5/AAAbbb?rlkey=def&dl=0"),
            ("Carol <carol@client.example>", "Lunch on Friday?", None),
        ]
        for sender, subject, link in mails:
            dovecot.append(account.user, email(account.user, sender, subject, link))
        receiver.wait_for(2, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            doc = requests.get(service.url + "/api/status", headers={"X-API-Key": TOKEN}, timeout=5).json()
            if (doc.get("counters") or {}).get("webhooks_delivered") == 2 and doc["counters"]["emails_skipped"]:
                break
            time.sleep(0.3)
        time.sleep(1.2)  # one more publication, so the page shows a fresh cycle
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        if os.path.exists(out):
            os.unlink(out)
        url = f"http://ops:{TOKEN}@127.0.0.1:{service.port}/"
        args = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                f"--screenshot={os.path.abspath(out)}", url]
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if result.returncode != 0 or not os.path.exists(out):
            raise SystemExit(f"chromium failed ({result.returncode}):\n{result.stderr[-3000:]}")
        with open(out, "rb") as handle:
            header = handle.read(8)
        if header != b"\x89PNG\r\n\x1a\n" or os.path.getsize(out) < 10_000:
            raise SystemExit(f"{out} is not a plausible screenshot ({os.path.getsize(out)} bytes)")
        log = service.log_text()
        if "GET /" not in log and '"GET / ' not in log:
            print("warning: the service log shows no GET / (did chromium reach the page?)", file=sys.stderr)
        print(f"saved {out} ({os.path.getsize(out)} bytes)")
    finally:
        for stop in (lambda: service and service.cleanup(), lambda: receiver and receiver.stop(),
                     lambda: dovecot and dovecot.stop(), lambda: redis_server and redis_server.stop()):
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                print(f"cleanup: {exc}", file=sys.stderr)
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "dashboard.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1100)
    args = parser.parse_args(argv)
    run_stack_and_screenshot(args.out, args.width, args.height)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
