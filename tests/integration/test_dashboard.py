"""``GET /``: a plain server-rendered page behind HTTP Basic, escaping everything, loading nothing from anywhere."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import threading
import time
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import lxml.html
import pytest

from tests.fixtures.chromium import HeadlessChromium, running_chromium
from tests.integration.test_operator_routes import SERVICE_ADDRESS, TOKEN, publish_holder_status, service_env  # noqa: F401 - service_env is a fixture

pytestmark = pytest.mark.redis


def basic(password: str = TOKEN, user: str = "ops") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def record_email(store, subject: str, sender: str = "j***@example.com", outcome: str = "delivered") -> None:
    store.record_recent({"at": "2026-11-28T18:30:00Z", "sender": sender, "subject": subject, "links": ["dropbox"],
                         "event_id": "msg_abc", "outcome": outcome})


def page(app, headers):
    response = app.test_client().get("/", headers=headers)
    return response, lxml.html.fromstring(response.get_data(as_text=True))


def test_the_page_shows_the_lease_holder_and_the_last_processed_email(make_app, redis_url):
    # Given a published holder and two processed emails
    app = make_app(service_env(redis_url))
    runtime = app.extensions["render_signal"]
    published = publish_holder_status(runtime)
    record_email(runtime.store, "Older delivery", outcome="skipped: no_links")
    record_email(runtime.store, "Final renders for Friday")
    # When an operator opens the page with the token as password
    response, tree = page(app, basic())
    # Then it shows who holds the lease, the last successful cycle, the outbox, and the newest email first
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert tree.get_element_by_id("lease-holder").text_content() == published["lease"]["holder"]
    assert tree.get_element_by_id("last-success").text_content() == published["poller"]["last_success_at"]
    assert tree.get_element_by_id("outbox-pending").text_content() == "0"
    rows = tree.get_element_by_id("recent").findall(".//tr")
    first = [cell.text_content() for cell in rows[1].findall("td")]
    assert first == ["2026-11-28T18:30:00Z", "j***@example.com", "Final renders for Friday", "dropbox", "delivered"]
    assert [cell.text_content() for cell in rows[2].findall("td")][4] == "skipped: no_links"



def test_the_page_and_the_status_route_show_the_same_health(make_app, redis_url):
    # Given a published holder
    app = make_app(service_env(redis_url))
    publish_holder_status(app.extensions["render_signal"])
    # When the page and /api/status are read
    _, tree = page(app, basic())
    status = app.test_client().get("/api/status", headers={"X-API-Key": TOKEN}).get_json()
    # Then the page's heading says the status the one health module gave the status route
    assert status["health"]["status"] in tree.xpath("string(//h1)")
    assert status["problems"] == [] and [m["id"] for m in status["mailboxes"]] == ["default"]


def test_the_page_loads_no_external_resource_and_runs_no_script(make_app, redis_url):
    app = make_app(service_env(redis_url))
    runtime = app.extensions["render_signal"]
    publish_holder_status(runtime)
    record_email(runtime.store, "See https://www.dropbox.com/s/abc/file.zip?dl=0")
    response, tree = page(app, basic())
    assert tree.xpath("//script") == []
    for element in tree.iter():
        for attribute in ("src", "href", "action", "data", "srcset", "poster"):
            value = (element.get(attribute) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (element.tag, attribute, value)
    assert tree.xpath("//link[@rel='stylesheet'] | //img | //iframe | //object | //embed") == []
    styles = tree.xpath("//style")
    assert len(styles) == 1 and "url(" not in styles[0].text and "@import" not in styles[0].text
    # The browser enforces it too: nothing but the one inline style (by hash) may load.
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    digest = base64.b64encode(hashlib.sha256(styles[0].text.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in policy


def test_everything_from_an_email_is_html_escaped(make_app, redis_url):
    app = make_app(service_env(redis_url))
    runtime = app.extensions["render_signal"]
    publish_holder_status(runtime)
    record_email(runtime.store, '<script>alert("x")</script><img src=https://evil.test/x>',
                 sender='"><b>x</b>@evil.test')
    response, tree = page(app, basic())
    assert tree.xpath("//script | //img | //b") == []
    assert '<script>alert("x")</script>' in tree.get_element_by_id("recent").text_content()


def test_the_page_masks_correspondent_addresses_that_slipped_into_a_subject(make_app, redis_url):
    app = make_app(service_env(redis_url))
    runtime = app.extensions["render_signal"]
    record_email(runtime.store, "Files from jane.roe@client.example")
    text = page(app, basic())[0].get_data(as_text=True)
    assert "jane.roe@client.example" not in text and "j***@client.example" in text


@pytest.mark.parametrize("headers", [
    basic("wrong"), basic(TOKEN + "x"), {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Basic !!!"},
], ids=["wrong", "longer", "bearer-not-basic", "garbage"])
def test_the_page_refuses_wrong_basic_credentials_when_a_token_is_configured(make_app, redis_url, headers):
    app = make_app(service_env(redis_url))
    response = app.test_client().get("/", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Basic realm="render-signal"')
    assert TOKEN not in response.get_data(as_text=True)


@pytest.mark.parametrize("user", ["ops", "", "anyone at all"])
def test_any_user_name_is_accepted_with_the_token_as_password(make_app, redis_url, user):
    app = make_app(service_env(redis_url))
    assert app.test_client().get("/", headers=basic(TOKEN, user)).status_code == 200


def test_without_a_configured_token_the_page_shows_only_the_health_summary(make_app, redis_url):
    # Given no token, and a holder that published (which must not be shown to anonymous visitors)
    app = make_app(service_env(redis_url, STATUS_API_TOKEN=None))
    runtime = app.extensions["render_signal"]
    published = publish_holder_status(runtime)
    record_email(runtime.store, "Private subject line")
    # When anyone opens the page
    response, tree = page(app, {})
    # Then it answers without credentials, with the /health summary only
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    health = app.test_client().get("/health").get_json()
    assert health["status"] in tree.xpath("string(//h1)")
    assert health["status"] == "ok" and health["problems"] == []
    for check, value in health["checks"].items():
        assert check in text and value in text
    assert published["lease"]["holder"] not in text
    assert "Private subject line" not in text
    assert tree.xpath("//*[@id='lease-holder'] | //*[@id='recent']") == []


# --- several mailboxes and targets (issue 17) -------------------------------------------------------------------------

# Values a target carries that the page must never show (the status document holds none of them; keep it so).
HOOK_PATH = "make-hook-path-Jq55"
HOOK_SECRET = "whsec_cGFnZS10ZXN0LXNpZ25pbmcta2V5LUxyMDg="  # base64 of 26 bytes
HOOK_HEADER = "make-apikey-Tt61-do-not-print"


def several_config(tmp_path, today: datetime.date) -> str:
    """Three mailboxes (``agency`` never published) and two targets, ``make-folders`` with a window closed from
    yesterday to tomorrow in Paris (so closed now whatever the hour), a rate limit and a body cap."""
    closed = ", ".join(str(today + datetime.timedelta(days=offset)) for offset in (-1, 0, 1))
    path = tmp_path / "several.yaml"
    path.write_text(f"""
mailboxes:
  - {{id: default, server: 127.0.0.1, port: 1, tls: none, user: {SERVICE_ADDRESS}, password: imap-pw-Kx71-secret}}
  - {{id: studio, server: 127.0.0.1, port: 1, tls: none, user: studio@render-signal.test, password: studio-pw-Wd32,
     folder: Clients/Studio}}
  - {{id: agency, server: 127.0.0.1, port: 1, tls: none, user: agency@render-signal.test, password: agency-pw-Hn84}}
targets:
  - {{id: default, url: "http://127.0.0.1:9/hook/whk-path-7f3a", allow_insecure: true}}
  - id: make-folders
    url: "http://127.0.0.1:9/{HOOK_PATH}"
    allow_insecure: true
    profile: make
    secret: {HOOK_SECRET}
    headers: {{x-make-apikey: {HOOK_HEADER}}}
    max_body_bytes: 50000
    rate_per_second: 2.5
    window: {{timezone: Europe/Paris, closed_dates: [{closed}]}}
""", encoding="utf-8")
    return str(path)


def several_env(redis_url: str, config_path: str) -> dict[str, str]:
    return {"RENDER_SIGNAL_CONFIG": config_path, "REDIS_URL": redis_url, "STATUS_API_TOKEN": TOKEN,
            "REDIS_TIMEOUT_SECONDS": "0.3"}


def publish_mailbox_status(runtime, mailbox_id: str, *, folder: str, last_uid: int, ttl: float = 30.0) -> dict:
    """Publish a mailbox holder's status the way ``StatusObserver`` does for every mailbox but the first."""
    from background.lease import RedisLease
    from background.runner import PollerStatus

    lease = RedisLease(runtime.redis_client, ttl_seconds=ttl, key=f"render_signal:poller_lock:{mailbox_id}")
    assert lease.try_acquire()
    lease.renew()
    poller = PollerStatus(mailbox=folder, state="idle", imap="ok", uidvalidity=1700000007, last_uid=last_uid,
                          idle=True, last_cycle_at=time.time() - 1, last_success_at=time.time() - 5)
    document = {"lease": lease.snapshot(), "poller": poller.snapshot(),
                "instance": {"host": "studio-host", "pid": 5151, "worker": 1, "uptime_s": 10.0, "version": "x"}}
    runtime.store.publish_mailbox_status(mailbox_id, document, ttl_seconds=ttl)
    return document


def enqueue_for(store, monkeypatch, event_id: str, *, mailbox_id: str, target_id: str, age_s: float) -> None:
    """Queue one webhook as if ``age_s`` ago: the store stamps "pending since" with its own clock, which is moved
    back for this one write (a real Redis write; only the time is not now)."""
    from services import state_store_redis
    from services.state_store import OutboxItem

    created = time.time() - age_s
    with monkeypatch.context() as patch:
        patch.setattr(state_store_redis, "now_or_clock", lambda now: created if now is None else float(now))
        assert store.enqueue(OutboxItem(
            event_id=event_id, email_id=event_id[4:], payload={"event_id": event_id}, mailbox=mailbox_id,
            uidvalidity=1, uid=abs(hash(event_id)) % 10000, message_id=None, created_at=created,
            next_attempt_at=created, mailbox_id=mailbox_id, target_id=target_id))


def table_rows(tree, table_id: str) -> dict[str, dict[str, str]]:
    """``{first cell: {header: cell text}}`` for one of the page's tables."""
    rows = tree.get_element_by_id(table_id).findall(".//tr")
    headers = [cell.text_content().strip() for cell in rows[0].findall("th")]
    return {cells[0]: dict(zip(headers, cells, strict=True))
            for cells in ([cell.text_content().strip() for cell in row.findall("td")] for row in rows[1:])}


def table_row_element(tree, table_id: str, first_cell: str):
    (row,) = [row for row in tree.get_element_by_id(table_id).findall(".//tr")
              if row.findall("td") and row.findall("td")[0].text_content().strip() == first_cell]
    return row


@pytest.fixture
def several(make_app, redis_url, tmp_path, monkeypatch):
    """The app on three mailboxes and two targets: ``default`` and ``studio`` published by their holders,
    ``agency`` by nobody; two webhooks of ``studio`` pending for ``make-folders``, the older 3 minutes old."""
    app = make_app(several_env(redis_url, several_config(tmp_path, datetime.date.today())))
    runtime = app.extensions["render_signal"]
    publish_holder_status(runtime)
    publish_mailbox_status(runtime, "studio", folder="Clients/Studio", last_uid=77)
    enqueue_for(runtime.store, monkeypatch, "msg_studio_1", mailbox_id="studio", target_id="make-folders", age_s=185)
    enqueue_for(runtime.store, monkeypatch, "msg_studio_2", mailbox_id="studio", target_id="make-folders", age_s=20)
    return app


def test_the_page_lists_every_configured_mailbox_with_its_holder_checkpoint_and_backlog(several):
    # When an operator opens the page
    response, tree = page(several, basic())
    status = several.test_client().get("/api/status", headers={"X-API-Key": TOKEN}).get_json()
    # Then the Mailboxes table has one row per configured mailbox, in the file's order, as /api/status has them
    mailboxes = table_rows(tree, "mailboxes")
    assert list(mailboxes) == [entry["id"] for entry in status["mailboxes"]] == ["default", "studio", "agency"]
    studio = mailboxes["studio"]
    studio_status = status["mailboxes"][1]
    assert studio["folder"] == "Clients/Studio"
    assert studio["state"] == "idle"
    assert studio["holder"] == f"held by {studio_status['lease']['holder']}"
    assert studio["checkpoint"] == "1700000007/77"
    assert studio["backlog"] == "2"
    assert studio["last success"] == studio_status["last_success_at"]
    # and the default mailbox shows the single-mailbox holder's figures, with nothing waiting
    assert mailboxes["default"]["checkpoint"] == "1700000000/42"
    assert mailboxes["default"]["backlog"] == "0"
    assert mailboxes["default"]["holder"].startswith("held by ")


def test_a_mailbox_nobody_holds_is_shown_as_no_holder_by_text_and_class(several):
    _, tree = page(several, basic())
    agency = table_rows(tree, "mailboxes")["agency"]
    # A mailbox whose holder published nothing within TTL + retry says so in words ...
    assert agency["state"] == "no holder"
    assert agency["holder"] == "none"
    assert agency["checkpoint"] == "\u2014" and agency["last success"] == "\u2014"
    # ... and its row and state cell are marked for the eye too (class, beside the text)
    row = table_row_element(tree, "mailboxes", "agency")
    assert "marked" in row.classes and "warn" in row.classes
    assert row.xpath(".//span[contains(@class, 'flag')]")[0].text_content() == "no holder"
    # while a held mailbox is not marked
    assert "marked" not in table_row_element(tree, "mailboxes", "studio").classes


def test_the_page_lists_every_target_with_its_counts_window_rate_and_body_cap(several):
    _, tree = page(several, basic())
    status = several.test_client().get("/api/status", headers={"X-API-Key": TOKEN}).get_json()
    targets = table_rows(tree, "targets")
    assert list(targets) == [entry["id"] for entry in status["targets"]] == ["default", "make-folders"]
    make = targets["make-folders"]
    assert make["profile"] == "make"
    assert (make["pending"], make["held"], make["dead"]) == ("2", "0", "0")
    # the oldest pending webhook's age, as a person reads it
    assert make["oldest pending"] == "3 min"
    assert make["rate limit"] == "2.5/s"
    assert make["body cap"] == "50 kB"
    # the window is closed today: it says when it opens, in the target's own time zone
    opens_at = status["targets"][1]["window"]["opens_at"]
    opens_local = datetime.datetime.fromisoformat(opens_at.replace("Z", "+00:00")).astimezone(ZoneInfo("Europe/Paris"))
    assert make["window"] == f"opens {opens_local:%a %Y-%m-%d %H:%M} Europe/Paris"
    (time_element,) = table_row_element(tree, "targets", "make-folders").xpath(".//time")
    assert time_element.get("datetime") == opens_at
    # the default target: always open, nothing pending, no circuit reported (yet) by the status document
    default = targets["default"]
    assert (default["pending"], default["oldest pending"], default["window"]) == ("0", "\u2014", "always open")
    circuit = status["targets"][0].get("circuit")
    assert default["circuit"] == ("\u2014" if circuit is None else circuit.replace("_", "-"))


def test_the_page_shows_no_url_secret_or_header_of_any_target(several):
    text = page(several, basic())[0].get_data(as_text=True)
    for value in (HOOK_PATH, HOOK_SECRET, HOOK_HEADER, "whk-path-7f3a", "127.0.0.1:9"):
        assert value not in text
    # nor their redacted form: these values are registered secrets, so a leak would show as log_setup.REDACTED
    # (no email address is on this page to be masked with asterisks)
    assert "***" not in text


def test_the_single_mailbox_sections_still_show_the_default_mailbox_beside_the_tables(several):
    _, tree = page(several, basic())
    status = several.test_client().get("/api/status", headers={"X-API-Key": TOKEN}).get_json()
    assert tree.get_element_by_id("lease-holder").text_content() == status["lease"]["holder"]
    assert tree.get_element_by_id("poller-state").text_content() == status["poller"]["state"] == "polling"
    assert tree.get_element_by_id("outbox-pending").text_content() == "2"


# --- in a real browser --------------------------------------------------------------------------------------------

# Measured in the browser after layout: the page's own width against the window's, and for each table its
# container, every cell's font size and line count, and whether scrolling the container brings the last column in.
LAYOUT = """(() => {
  const page = document.documentElement;
  const lines = (cell) => { const range = document.createRange(); range.selectNodeContents(cell);
                            const lineHeight = parseFloat(getComputedStyle(cell).lineHeight);
                            if (!(lineHeight > 0)) throw new Error("no line height in px");
                            return Math.round(range.getBoundingClientRect().height / lineHeight); };
  const tables = ["mailboxes", "targets"].map((id) => {
    const table = document.getElementById(id), box = table.parentElement, cells = [...table.querySelectorAll("th,td")];
    const before = box.getBoundingClientRect();
    box.scrollLeft = box.scrollWidth;
    const last = table.rows[0].cells[table.rows[0].cells.length - 1].getBoundingClientRect();
    const seen = {left: last.left >= before.left - 1, right: last.right <= before.right + 1};
    box.scrollLeft = 0;
    return {id, rows: table.rows.length, overflowX: getComputedStyle(box).overflowX,
            boxLeft: before.left, boxRight: before.right, boxWidth: box.clientWidth, tableWidth: table.scrollWidth,
            lastColumnSeen: seen.left && seen.right,
            minFontPx: Math.min(...cells.map((c) => parseFloat(getComputedStyle(c).fontSize))),
            multiLine: cells.filter((c) => c.textContent.trim() && !c.classList.contains("reason") && lines(c) > 1)
                            .map((c) => c.textContent.trim()),
            headers: [...table.rows[0].cells].map((c) => c.innerText.trim())};
  });
  return {pageWidth: page.scrollWidth, windowWidth: page.clientWidth, tables};
})()"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[HeadlessChromium]:
    with running_chromium() as browser:
        yield browser


@contextlib.contextmanager
def served(app) -> Iterator[str]:
    """The app on a real HTTP server on loopback (werkzeug, threaded), for the browser; stopped on exit."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="page-server",
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("width", [360, 1280])
def test_both_tables_render_in_chromium_and_stay_readable_in_a_narrow_window(several, chromium, width):
    # Given the page of three mailboxes and two targets, served over HTTP with its real headers (CSP included)
    with served(several) as url:
        # When a browser window of this width opens it with the operator's credentials
        tab = chromium.open(url, width=width, height=900, headers=basic())
        try:
            layout = tab.evaluate(LAYOUT)
            title = tab.evaluate("document.title")
        finally:
            tab.close()
    assert title == "render-signal status"
    mailboxes, targets = layout["tables"]
    # Then both tables are there, one row per mailbox / target under their headers
    assert (mailboxes["rows"], targets["rows"]) == (1 + 3, 1 + 2)
    assert mailboxes["headers"] == ["id", "folder", "state", "holder", "checkpoint", "backlog", "last success",
                                    "health"]
    assert targets["headers"][:7] == ["id", "profile", "pending", "held", "oldest pending", "dead", "circuit"]
    # and the page itself never scrolls sideways: a table wider than the window scrolls inside its own container
    assert layout["pageWidth"] <= layout["windowWidth"], layout
    for table in (mailboxes, targets):
        assert table["overflowX"] == "auto"
        assert 0 <= table["boxLeft"] and table["boxRight"] <= layout["windowWidth"], table
        # readable: no cell text below 12 px, none broken over lines, and every column reachable by scrolling
        assert table["minFontPx"] >= 12, table
        assert table["multiLine"] == [], table
        assert table["lastColumnSeen"], table
    if width == 360:
        assert targets["tableWidth"] > targets["boxWidth"], "ten columns do not fit 360 px: the container scrolls"
