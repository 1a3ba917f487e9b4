"""``GET /``: a plain server-rendered page behind HTTP Basic, escaping everything, loading nothing from anywhere."""

from __future__ import annotations

import base64
import hashlib

import lxml.html
import pytest

from tests.integration.test_operator_routes import TOKEN, publish_holder_status, service_env  # noqa: F401 - service_env is a fixture

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
    {}, basic("wrong"), basic(TOKEN + "x"), {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Basic !!!"},
], ids=["none", "wrong", "longer", "bearer-not-basic", "garbage"])
def test_the_page_asks_for_basic_credentials_when_a_token_is_configured(make_app, redis_url, headers):
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
