"""Pictures of the operator console for the README (``make screenshots``): writes ``docs/console*.png``.

Starts a small real stack on loopback with the test infrastructure (Dovecot, the webhook receiver, the service under
Gunicorn with a status and an admin token), lets four emails go through (two delivered, one refused by the receiver
with a 400 so it becomes a dead letter, one skipped for having no link), sends a sample webhook, then signs in to the
console in Debian's headless Chromium through Selenium and Debian's chromedriver (``harness/browser.py``: explicit
paths, Selenium Manager offline, no background networking) and saves full-page PNGs of the console on a desktop
and at a 390 px phone viewport, of one email's page and of the login form. Everything started is stopped by PID.
Only this script writes docs/: the tests assert, they never write there.

    .venv/bin/python -m scripts.console_screenshots [--out-dir docs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN = "screenshot-admin-token"
STATUS = "screenshot-status-token"
SHOTS = ("console.png", "console-phone.png", "console-email.png", "console-login.png")


def emails() -> list[tuple[str, str, list[str] | None, int]]:
    """``(sender, subject, links, receiver's answer)``: what the pictures show."""
    return [
        ("Alice Martin <alice.martin@client.example>", "Final renders - episode 4",
         ["https://www.dropbox.com/scl/fi/a1b2c3d4e5/ep4-final.mov?rlkey=abc&dl=0"], 200),
        ("Bob Stone <bob@agency.example>", "Re: colour grade v2",
         ["https://we.tl/t-Zx81KdP2qa"], 200),
        ("Dana Field <dana@studio.example>", "Stills for the poster",
         ["https://www.dropbox.com/scl/fo/f9e8d7c6b5/AAAbbb?rlkey=def&dl=0"], 400),
        ("Carol <carol@client.example>", "Lunch on Friday?", [], 200),
    ]


def _status(service) -> dict:
    return service.get("/api/status", headers={"Authorization": f"Bearer {STATUS}"}).json()


def _fill(stack) -> str:
    """Send the emails through; returns the email id of the dead letter."""
    from harness.mail import make_email
    from harness.waiting import wait_for

    account, receiver, service = stack
    dead_event = ""
    for sender, subject, links, answer in emails():
        receiver.respond_with(answer, "Accepted" if answer == 200 else "scenario mapping is off: no subject field")
        seen = len(receiver.events)
        account.server.append(account.user, make_email(subject=subject, sender=sender, links=links))
        if links:
            wait_for(lambda seen=seen: len(receiver.events) > seen, 60, f"the webhook of {subject!r}", interval=0.2)
        if answer != 200:
            wait_for(lambda: (_status(service)["outbox"] or {}).get("dead_letters", {}).get("count"), 30,
                     "the dead letter", interval=0.2)
            dead_event = _status(service)["outbox"]["dead_letters"]["recent"][0]["event_id"]
    receiver.respond_with(200, "Accepted")
    wait_for(lambda: len(_status(service)["counters"]["emails_skipped"] or {}) > 0, 30, "the skipped email",
             interval=0.2)
    time.sleep(1.2)  # one more publication, so the page shows a fresh cycle
    return dead_event.removeprefix("msg_")


def _sign_in(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/login")
    driver.find_element(By.ID, "token").send_keys(ADMIN)
    driver.find_element(By.CSS_SELECTOR, "form[action='/login'] button[type=submit]").click()
    deadline = time.monotonic() + 20
    while "/login" in driver.current_url and time.monotonic() < deadline:
        time.sleep(0.1)


def _save(driver, path: str) -> None:
    from harness.browser import full_page_png

    data = full_page_png(driver)
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 10_000:
        raise SystemExit(f"{path}: not a plausible screenshot ({len(data)} bytes)")
    with open(path, "wb") as handle:
        handle.write(data)
    print(f"saved {os.path.relpath(path, ROOT)} ({len(data)} bytes)")


def _shoot(driver, url: str, dead_email: str, out_dir: str) -> None:
    from selenium.webdriver.common.by import By

    from harness.browser import DESKTOP, PHONE

    driver.set_window_size(*DESKTOP)
    driver.get(url + "/login")
    _save(driver, os.path.join(out_dir, "console-login.png"))
    _sign_in(driver, url)
    # A sample webhook from the page, so the history and its notice show in the pictures.
    driver.find_element(By.CSS_SELECTOR, "form[action='/api/targets/default/sample'] button").click()
    time.sleep(0.5)
    driver.get(url + "/")
    _save(driver, os.path.join(out_dir, "console.png"))
    driver.get(f"{url}/emails/{dead_email}")
    _save(driver, os.path.join(out_dir, "console-email.png"))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    driver.get(url + "/")
    _save(driver, os.path.join(out_dir, "console-phone.png"))


def run(out_dir: str) -> None:
    from harness.binaries import find_binary
    from harness.browser import start_driver
    from harness.dovecot import DovecotServer
    from harness.receiver import WebhookReceiver
    from harness.service import ServiceProcess

    chromium, chromedriver = find_binary("chromium", "chromium"), find_binary("chromedriver", "chromium-driver")
    dovecot = receiver = service = driver = None
    profile = tempfile.mkdtemp(prefix="se-chromium-")
    try:
        dovecot = DovecotServer(find_binary("dovecot", "dovecot-imapd")).start()
        account = dovecot.new_account("studio")
        receiver = WebhookReceiver().start()
        env = {**account.settings_env(), "WEBHOOK_URL": receiver.url, "WEBHOOK_ALLOW_INSECURE": "true",
               "STATUS_API_TOKEN": STATUS, "ADMIN_API_TOKEN": ADMIN, "EMAIL_POLLING_INTERVAL_SECONDS": "1",
               "IMAP_TIMEOUT_SECONDS": "3"}
        service = ServiceProcess(env, workers=2, threads=2).start()
        dead_email = _fill((account, receiver, service))
        os.makedirs(out_dir, exist_ok=True)
        driver = start_driver(chromium, chromedriver, profile)
        _shoot(driver, service.url, dead_email, out_dir)
    finally:
        for stop in (lambda: driver and driver.quit(), lambda: service and service.cleanup(),
                     lambda: receiver and receiver.stop(), lambda: dovecot and dovecot.stop()):
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                print(f"cleanup: {exc}", file=sys.stderr)
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=os.path.join(ROOT, "docs"))
    args = parser.parse_args(argv)
    run(args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
