"""The console's pages in-process (Flask test client) over the real SQLite state store: who sees what, every form
posts to an operator API path with the session's CSRF token, payloads for the admin only, nothing from an email or
the query string is markup, and the email page is the same report as ``GET /api/emails/<id>``."""

from __future__ import annotations

import json

import lxml.html
import pytest

from tests.integration.test_operator_api import (
    ADMIN,
    STATUS,
    csrf_of,
    dead_item,
    login,
    operator_env,
    park,
    queue_item,
    store_of,
)

ACTION_PATHS = ("/api/outbox/", "/api/parked/", "/api/replay", "/api/targets/", "/api/try-email")


def tree_of(response) -> lxml.html.HtmlElement:
    return lxml.html.fromstring(response.get_data(as_text=True))


@pytest.fixture
def console(make_app, tmp_path):
    app = make_app(operator_env(tmp_path))
    return app, store_of(app)


def test_an_admin_session_gets_a_form_with_its_csrf_token_for_every_action(console):
    app, store = console
    dead = dead_item(store)
    parked = park(store, uid=41)
    client = app.test_client()
    login(client)
    tree = tree_of(client.get("/"))
    forms = tree.xpath("//form[@method='post']")
    actions = {form.get("action") for form in forms}
    # Then each dead letter, parked email and target has its buttons, and bulk replay and try-email are there
    assert f"/api/outbox/{dead.event_id}/replay" in actions
    assert f"/api/parked/{parked.parked_id}/replay" in actions
    for target in ("default", "archive"):
        assert {f"/api/targets/{target}/sample", f"/api/targets/{target}/pause"} <= actions
    assert "/api/replay" in actions and "/api/try-email?mailbox=default" in actions
    # and every form but the sign-out posts to an operator API path with this session's CSRF token
    csrf = csrf_of(client)
    for form in forms:
        assert form.get("action").startswith(ACTION_PATHS) or form.get("action") == "/logout"
        assert form.xpath(".//input[@name='csrf_token']/@value") == [csrf]


def test_a_paused_target_offers_resume_and_says_so_in_words(console):
    app, store = console
    client = app.test_client()
    login(client)
    response = client.post("/api/targets/archive/pause", data={"csrf_token": csrf_of(client), "next": "/"})
    page = client.get(response.headers["Location"])
    tree = tree_of(page)
    row = tree.get_element_by_id("target-archive")
    assert row.xpath(".//form/@action") == ["/api/targets/archive/sample", "/api/targets/archive/resume"]
    assert "paused by an operator since" in row.text_content()
    assert tree.get_element_by_id("notice").text_content() == "pause: paused"
    assert "target archive" in tree.get_element_by_id("attention").text_content()


def test_a_read_only_session_sees_dead_letters_without_forms_or_payloads(console):
    app, store = console
    dead = dead_item(store)
    client = app.test_client()
    login(client, token=STATUS)
    tree = tree_of(client.get("/"))
    entry = tree.get_element_by_id(f"dead-{dead.event_id}")
    assert "http_400" in entry.text_content() and "bad scenario" in entry.text_content()
    assert tree.xpath("//form[starts-with(@action, '/api/')]") == []
    assert tree.xpath("//pre[contains(@class, 'payload')]") == []
    email = tree_of(client.get(f"/emails/{dead.email_id}"))
    assert email.xpath("//pre[contains(@class, 'payload')]") == [] and email.xpath("//form[@action!='/logout']") == []


def test_the_admin_sees_the_payload_with_correspondents_masked(console):
    app, store = console
    dead = dead_item(store)
    client = app.test_client()
    login(client)
    tree = tree_of(client.get("/"))
    (payload,) = tree.xpath(f"//li[@id='dead-{dead.event_id}']//pre[contains(@class, 'payload')]")
    shown = json.loads(payload.text_content())
    assert shown["event_id"] == dead.event_id
    sender = dead.payload["sender_email"]
    assert "@" in sender and sender not in payload.text_content()
    assert shown["sender_email"].startswith(sender[0] + "***@")


def test_the_email_page_shows_what_the_api_reports_with_a_replay_for_a_dead_item(console):
    app, store = console
    dead = dead_item(store)
    client = app.test_client()
    login(client)
    report = client.get(f"/api/emails/{dead.email_id}").get_json()
    tree = tree_of(client.get(f"/emails/{dead.email_id}"))
    assert tree.get_element_by_id("email-id").text_content() == dead.email_id
    assert tree.get_element_by_id(f"status-{dead.event_id}").text_content() == report["items"][0]["status"] == "dead"
    assert tree.xpath("//form/@action")[-1] == f"/api/outbox/{dead.event_id}/replay"
    assert "bad scenario" in tree.get_element_by_id(f"item-{dead.event_id}").text_content()


def test_an_unknown_email_is_a_404_page_that_echoes_nothing(console):
    app, _ = console
    client = app.test_client()
    login(client)
    response = client.get("/emails/" + "0" * 32)
    assert response.status_code == 404 and "0" * 32 not in response.get_data(as_text=True)


def test_an_email_subject_and_a_receiver_answer_are_never_markup(console):
    app, store = console
    item = queue_item(store, subject='<script>alert("s")</script>')
    store.dead_letter(item.event_id, "http_400", 400, "<img src=x onerror=alert(1)>", now=None)
    client = app.test_client()
    login(client)
    for path in ("/", f"/emails/{item.email_id}"):
        tree = tree_of(client.get(path))
        assert tree.xpath("//script | //img") == []
        assert "<img src=x onerror=alert(1)>" in tree.text_content()


@pytest.mark.parametrize("notice", ["<b>hi</b>:x", "pause:<script>", "call us at 555-0100 now", "a" * 200 + ":b"])
def test_only_an_action_notice_shape_is_echoed_from_the_query_string(console, notice):
    app, _ = console
    client = app.test_client()
    login(client)
    tree = tree_of(client.get("/", query_string={"notice": notice}))
    assert tree.xpath("//*[@id='notice']") == []


def test_without_credentials_the_console_and_an_email_page_send_a_browser_to_the_login_form(console):
    app, store = console
    dead = dead_item(store)
    client = app.test_client()
    assert client.get("/").headers["Location"] == "/login?next=/"
    assert client.get(f"/emails/{dead.email_id}").headers["Location"] == f"/login?next=/emails/{dead.email_id}"
    # and a wrong Basic password is a 401, as before
    assert client.get("/", headers={"Authorization": "Basic b3BzOndyb25n"}).status_code == 401
    assert ADMIN not in client.get("/login").get_data(as_text=True)


def test_a_refresh_token_mailbox_links_the_admin_to_its_device_code_sign_in(make_app, tmp_path,
                                                                          identity_provider_tls):
    from tests.integration.test_device_sign_in import ADMIN as SIGN_IN_ADMIN
    from tests.integration.test_device_sign_in import PAGE, sign_in_env
    from tests.integration.test_device_sign_in import STATUS as SIGN_IN_STATUS

    app = make_app(sign_in_env(identity_provider_tls, tmp_path))
    admin, reader = app.test_client(), app.test_client()
    login(admin, token=SIGN_IN_ADMIN)
    login(reader, token=SIGN_IN_STATUS)
    row = tree_of(admin.get("/")).xpath("//table[@id='mailboxes']//tr[td]")[0]
    assert row.xpath(".//a[@class='sign-in']/@href") == [PAGE]
    assert tree_of(reader.get("/")).xpath("//a[@class='sign-in']") == []


def test_a_password_mailbox_offers_no_sign_in_link(console):
    app, _ = console
    client = app.test_client()
    login(client)
    assert tree_of(client.get("/")).xpath("//a[@class='sign-in']") == []
