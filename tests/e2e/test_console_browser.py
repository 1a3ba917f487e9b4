"""The operator console in a real headless Chromium (Selenium + Debian's chromedriver) against the real service.

One stack per module: Dovecot (a mailbox), a webhook receiver (harness/receiver.py) and the service under Gunicorn
with a status token and an admin token. An operator signs in on the login form, finds a dead letter (the receiver
refused the webhook with a 400), replays it with the page's form and sees it delivered; sends a sample webhook;
uploads an .eml and reads its dry-run payload; a form post without (or with a forged) CSRF token and a wrong token
on the login form are refused; a read-only session sees no form and no payload; at a 390 px phone viewport no page
scrolls sideways. The page runs no script of its own: the tests click and type like a person, and read the DOM.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from harness.browser import PHONE
from harness.dovecot import DovecotServer, ImapAccount
from harness.mail import make_email
from harness.receiver import WebhookReceiver
from harness.service import ServiceProcess
from harness.waiting import wait_for

pytestmark = [pytest.mark.imap, pytest.mark.slow]

ADMIN = "console-admin-Tk93-do-not-print"
STATUS = "console-status-Rq52-do-not-print"
REFUSAL = "scenario mapping is off: field subject missing"


@dataclass
class Stack:
    account: ImapAccount
    receiver: WebhookReceiver
    service: ServiceProcess

    @property
    def url(self) -> str:
        return self.service.url

    def status(self) -> dict:
        response = self.service.get("/api/status", headers={"Authorization": f"Bearer {STATUS}"})
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def stack(dovecot_server: DovecotServer) -> Iterator[Stack]:
    account = dovecot_server.new_account("console")
    receiver = WebhookReceiver().start()
    env = {**account.settings_env(), "WEBHOOK_URL": receiver.url, "WEBHOOK_ALLOW_INSECURE": "true",
           "STATUS_API_TOKEN": STATUS, "ADMIN_API_TOKEN": ADMIN, "EMAIL_POLLING_INTERVAL_SECONDS": "1",
           "IMAP_TIMEOUT_SECONDS": "3"}
    service = ServiceProcess(env, workers=2, threads=4)
    try:
        service.start()
        yield Stack(account, receiver, service)
    finally:
        service.cleanup()
        receiver.stop()


def sign_in(browser: Any, stack: Stack, token: str = ADMIN, path: str = "/") -> None:
    """Open ``path`` like a person: the console sends the browser to the login form; type the token, submit."""
    from selenium.webdriver.common.by import By

    browser.get(stack.url + path)
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys(token)
    press(browser, browser.find_element(By.CSS_SELECTOR, "form[action='/login'] button[type=submit]"))


def press(browser: Any, button: Any) -> None:
    """Click a form's button and wait for the page it leads to: a mark left on the old document (by the test's
    WebDriver, not the page, which runs no script) is gone, and the new document has loaded."""
    from selenium.webdriver.support.wait import WebDriverWait

    browser.execute_script("window.__beforeThisClick = true")
    button.click()
    WebDriverWait(browser, 20).until(lambda driver: driver.execute_script(
        "return window.__beforeThisClick === undefined && document.readyState === 'complete'"))


def page_text(browser: Any) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.TAG_NAME, "body").text


def dead_letter_of(stack: Stack, subject: str) -> dict:
    """Deliver an email whose webhook the receiver refuses (400): it becomes a dead letter at once."""
    def dead_letters() -> list[dict]:
        return (stack.status().get("outbox") or {}).get("dead_letters", {}).get("recent", [])

    known = {item["event_id"] for item in dead_letters()}
    stack.receiver.respond_with(400, REFUSAL)
    stack.account.server.append(stack.account.user, make_email(subject=subject))

    def dead() -> dict | None:
        fresh = [item for item in dead_letters() if item["event_id"] not in known]
        return fresh[0] if fresh else None

    try:
        return wait_for(dead, 60, "the refused webhook becoming a dead letter", interval=0.3)
    finally:
        stack.receiver.respond_with(200, "Accepted")


# --- the tests ----------------------------------------------------------------------------------------------------

@pytest.mark.timeout(150)
def test_an_operator_signs_in_finds_a_dead_letter_replays_it_and_sees_it_delivered(browser, stack):
    from selenium.webdriver.common.by import By

    # Given a webhook the receiver refused with a 400: a dead letter
    dead = dead_letter_of(stack, "Final renders for Friday")
    event_id = dead["event_id"]
    refused = len(stack.receiver.events)
    # When the operator signs in with the admin token
    sign_in(browser, stack)
    assert browser.current_url.rstrip("/") == stack.url
    assert browser.find_element(By.ID, "viewer").text.startswith("admin")
    # Then the dead letter is listed with its reason, the receiver's answer and (for the admin) its payload
    entry = browser.find_element(By.ID, f"dead-{event_id}")
    assert "http_400" in entry.text and "receiver: 400" in entry.text
    assert REFUSAL in entry.find_element(By.CSS_SELECTOR, "blockquote.excerpt").text
    payload = json.loads(entry.find_element(By.CSS_SELECTOR, "pre.payload").get_attribute("textContent"))
    assert payload["event_id"] == event_id and payload["subject"] == "Final renders for Friday"
    # and the target says in words why it needs a look, in its row and in the list of what needs attention
    assert "1 dead letter waiting for a replay" in browser.find_element(By.ID, "target-default").text
    assert "target default 1 dead letter waiting for a replay" in browser.find_element(By.ID, "attention").text
    # When they press its replay button
    press(browser, entry.find_element(By.CSS_SELECTOR, "form[action$='/replay'] button"))
    # Then the console comes back saying it was replayed, and the receiver gets the webhook, with the same id
    assert browser.find_element(By.ID, "notice").text == "replay dead letter: replayed"
    delivered = stack.receiver.wait_for(1, timeout=30)
    assert [event["headers"]["webhook-id"] for event in delivered] == [event_id]
    assert len(stack.receiver.events) == refused + 1
    # and the email's own page shows it delivered, with both attempts on its timeline
    email_id = payload["microsoft_graph_email_id"]

    def shown_delivered() -> bool:
        browser.get(f"{stack.url}/emails/{email_id}")
        return browser.find_element(By.ID, f"status-{event_id}").text == "delivered"

    wait_for(shown_delivered, 20, "the email page showing the replayed item delivered", interval=0.5)
    timeline = browser.find_element(By.CSS_SELECTOR, f"#item-{event_id} ol.timeline").text
    assert "HTTP 400" in timeline and "HTTP 200" in timeline
    assert "dropbox: resolution" in page_text(browser)
    # and the history records who did it
    browser.get(stack.url + "/")
    history = browser.find_element(By.ID, "actions").text
    assert "replay_dead_letter" in history and event_id in history and "session" in history


@pytest.mark.timeout(90)
def test_send_sample_posts_a_marked_test_webhook_and_shows_the_receivers_status(browser, stack):
    from selenium.webdriver.common.by import By

    before = len(stack.receiver.events)
    sign_in(browser, stack)
    row = browser.find_element(By.ID, "target-default")
    press(browser, row.find_element(By.CSS_SELECTOR, "form[action='/api/targets/default/sample'] button"))
    assert browser.find_element(By.ID, "notice").text == "sample: status 200"
    event = stack.receiver.events[before]
    assert event["json"]["test"] is True and event["json"]["event_id"].startswith("test_")
    assert event["headers"]["webhook-id"] == event["json"]["event_id"]


@pytest.mark.timeout(90)
def test_an_uploaded_eml_shows_its_dry_run_payload_and_sends_nothing(browser, stack, tmp_path: Path):
    from selenium.webdriver.common.by import By

    eml = tmp_path / "renders.eml"
    eml.write_bytes(make_email(subject="Try me: renders ready",
                               links=["https://www.dropbox.com/scl/fi/zz9try/cut.mov?rlkey=tryk3y&dl=0"]))
    before = len(stack.receiver.events)
    sign_in(browser, stack)
    form = browser.find_element(By.CSS_SELECTOR, "#try-email ~ form[enctype='multipart/form-data']")
    form.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(eml))
    press(browser, form.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    answer = json.loads(page_text(browser))
    assert answer["decision"] == "send" and answer["payload"]["subject"] == "Try me: renders ready"
    assert [link["provider"] for link in answer["payload"]["delivery_links"]] == ["dropbox"]
    time.sleep(1.5)  # a poll cycle or so: had anything been queued, the receiver would have it by now
    assert len(stack.receiver.events) == before


@pytest.mark.timeout(90)
def test_a_form_post_without_or_with_a_forged_csrf_token_is_refused(browser, stack):
    from selenium.webdriver.common.by import By

    sign_in(browser, stack)
    for forged in (None, "forged-csrf-token"):
        browser.get(stack.url + "/")
        form = browser.find_element(By.CSS_SELECTOR, "form[action='/api/targets/default/pause']")
        # The page runs no script; the test edits the form the way a forged page would post it.
        if forged is None:
            browser.execute_script("arguments[0].querySelector('[name=csrf_token]').remove()", form)
        else:
            browser.execute_script("arguments[0].querySelector('[name=csrf_token]').value = arguments[1]", form,
                                   forged)
        press(browser, form.find_element(By.TAG_NAME, "button"))
        assert json.loads(page_text(browser)) == {"error": "csrf_token_invalid"}
    # and the target was never paused
    (target,) = [entry for entry in stack.status()["targets"] if entry["id"] == "default"]
    assert target["paused"] is False
    # nor does an API call with a wrong token act
    response = requests.post(f"{stack.url}/api/targets/default/pause", headers={"Authorization": "Bearer nope"},
                             timeout=5)
    assert response.status_code == 401


@pytest.mark.timeout(60)
def test_a_wrong_token_on_the_login_form_opens_no_session(browser, stack):
    from selenium.webdriver.common.by import By

    sign_in(browser, stack, token=ADMIN + "x")
    assert browser.find_element(By.ID, "login-message").text == "Wrong token."
    assert browser.get_cookies() == []
    browser.get(stack.url + "/")
    assert "/login" in browser.current_url
    assert ADMIN not in browser.page_source


@pytest.mark.timeout(60)
def test_a_read_only_session_sees_no_form_and_no_payload(browser, stack):
    from selenium.webdriver.common.by import By

    sign_in(browser, stack, token=STATUS)
    assert browser.find_element(By.ID, "viewer").text.startswith("read-only")
    assert browser.find_elements(By.CSS_SELECTOR, "form[action^='/api/']") == []
    assert browser.find_elements(By.CSS_SELECTOR, "pre.payload") == []
    assert STATUS not in browser.page_source and ADMIN not in browser.page_source


@pytest.mark.timeout(90)
def test_at_a_390_px_phone_viewport_no_page_scrolls_sideways(browser, stack):
    from selenium.webdriver.common.by import By

    # Given a console with content in every section (a dead letter at least), seen on a phone
    dead = dead_letter_of(stack, "A subject long enough to wrap on a phone: final renders of episode four, v12")
    sign_in(browser, stack)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    email_id = dead["event_id"].removeprefix("msg_")
    for path in ("/", f"/emails/{email_id}", "/login"):
        browser.get(stack.url + path)
        browser.find_element(By.TAG_NAME, "h1")
        layout = browser.execute_script(
            "const d = document.documentElement;"
            "return {inner: window.innerWidth, scroll: d.scrollWidth, client: d.clientWidth,"
            "        body: document.body.scrollWidth};")
        # Then the viewport is the phone's, and nothing is wider than it (tables scroll in their own box)
        assert layout["inner"] == 390, (path, layout)
        assert layout["scroll"] <= layout["client"] and layout["body"] <= layout["client"], (path, layout)
    # and on a desktop neither
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.get(stack.url + "/")
    assert browser.execute_script("const d = document.documentElement; return d.scrollWidth <= d.clientWidth")
