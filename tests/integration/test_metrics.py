"""/metrics: Prometheus text that parses, numbers that match /api/status, the same from every worker, token rules."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_operator_routes import TOKEN, bearer, enqueue, publish_holder_status, service_env  # noqa: F401 - service_env is a fixture

pytestmark = pytest.mark.redis

EXPECTED_FAMILIES = {
    # counters (family names; samples carry _total)
    "render_signal_emails_seen", "render_signal_emails_processed", "render_signal_emails_skipped",
    "render_signal_webhooks_delivered", "render_signal_webhook_retries", "render_signal_dead_letters",
    "render_signal_possible_duplicates", "render_signal_r2_success", "render_signal_r2_fallback",
    "render_signal_html_truncations", "render_signal_parse_failures", "render_signal_emails_parked",
    "render_signal_duplicates_merged", "render_signal_flag_requests_dropped",
    # gauges
    "render_signal_oldest_unfinished_email_age_seconds",
    "render_signal_up", "render_signal_status_stale", "render_signal_outbox_pending",
    "render_signal_outbox_oldest_pending_age_seconds", "render_signal_outbox_dead_letters",
    "render_signal_last_success_age_seconds", "render_signal_lease_held", "render_signal_lease_renewals",
    "render_signal_lease_losses", "render_signal_poller_consecutive_errors", "render_signal_poller_state",
    "render_signal_build_info",
}


def scrape(app, **headers) -> dict[str, object]:
    response = app.test_client().get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(response.get_data(as_text=True))}


def samples(family) -> dict[tuple, float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value for sample in family.samples}


def busy_cluster(app) -> None:
    runtime = app.extensions["render_signal"]
    publish_holder_status(runtime)
    store = runtime.store
    store.incr("emails_seen", 7)
    store.incr("emails_processed", 4)
    store.incr("emails_skipped", 2, label="no_links")
    store.incr("emails_skipped", 1, label="sender_not_allowed")
    store.incr("r2_success", 3)
    store.incr("r2_fallback", 1, label="timeout")
    store.incr("parse_failures")
    enqueue(store, "msg_waiting")
    enqueue(store, "msg_gone")
    store.dead_letter("msg_gone", "http_410", 410, None)


def test_metrics_parse_with_the_prometheus_parser_and_use_the_documented_names(make_app, redis_url):
    app = make_app(service_env(redis_url))
    busy_cluster(app)
    families = scrape(app, **bearer())
    assert set(families) >= EXPECTED_FAMILIES
    assert all(name.startswith("render_signal_") for name in families)
    assert families["render_signal_webhooks_delivered"].type == "counter"
    assert families["render_signal_outbox_pending"].type == "gauge"


def test_metrics_counters_match_the_status_route(make_app, redis_url):
    # Given a cluster with counters, labelled counters, a pending item and a dead letter
    app = make_app(service_env(redis_url))
    busy_cluster(app)
    # When both are read
    families = scrape(app, **bearer())
    status = app.test_client().get("/api/status", headers=bearer()).get_json()
    # Then every counter of the status route is the matching metric, reason by reason (summed over the other labels:
    # mailbox, target)
    for name, value in status["counters"].items():
        by_reason: dict[str | None, float] = {}
        for sample in families[f"render_signal_{name}"].samples:
            reason = sample.labels.get("reason")
            by_reason[reason] = by_reason.get(reason, 0.0) + sample.value
        if isinstance(value, dict):
            assert by_reason == {reason: float(count) for reason, count in value.items()}, name
        else:
            assert by_reason == {None: float(value)}, name
    assert status["counters"]["emails_skipped"] == {"no_links": 2, "sender_not_allowed": 1}
    # … and so is every series of counter_series
    for row in status["counter_series"]:
        got = samples(families[f"render_signal_{row['name']}"])
        assert got[(f"render_signal_{row['name']}_total", tuple(sorted(row["labels"].items())))] == row["value"]
    # … and the gauges tell the same as the outbox and lease sections
    gauge = {name: family.samples[0].value for name, family in families.items()
             if family.type == "gauge" and family.samples}
    assert gauge["render_signal_outbox_pending"] == status["outbox"]["pending"] == 1
    assert gauge["render_signal_outbox_dead_letters"] == status["outbox"]["dead_letters"]["count"] == 1
    assert gauge["render_signal_lease_held"] == 1
    assert gauge["render_signal_lease_renewals"] == status["lease"]["renewals"]
    assert gauge["render_signal_poller_consecutive_errors"] == status["poller"]["consecutive_errors"]
    assert 0 <= gauge["render_signal_last_success_age_seconds"] < 60
    assert gauge["render_signal_status_stale"] == 0 and gauge["render_signal_up"] == 1
    # … and the default target of the status route carries the same outbox figures as the gauges
    (target,) = status["targets"]
    assert target["id"] == "default"
    assert (target["pending"], target["dead"]) == (gauge["render_signal_outbox_pending"],
                                                   gauge["render_signal_outbox_dead_letters"])
    assert target["oldest_pending_age_s"] == status["outbox"]["oldest_pending_age_s"]


def test_every_worker_reports_the_same_counters_not_process_local_ones(make_app, redis_url):
    # Given two workers on one store, one of which did all the counting
    first, second = make_app(service_env(redis_url)), make_app(service_env(redis_url))
    busy_cluster(first)
    # When both are scraped
    counters = [{name: samples(family) for name, family in scrape(app, **bearer()).items()
                 if family.type == "counter"} for app in (first, second)]
    # Then the numbers are the cluster's, identical, and no process-global default metric leaks in
    assert counters[0] == counters[1]
    assert counters[0]["render_signal_emails_seen"] == {("render_signal_emails_seen_total", ()): 7.0}
    text = second.test_client().get("/metrics", headers=bearer()).get_data(as_text=True)
    assert "python_gc" not in text and "process_cpu" not in text


def test_metrics_are_open_when_no_token_is_configured(make_app, redis_url):
    app = make_app(service_env(redis_url, STATUS_API_TOKEN=None))
    assert "render_signal_up" in scrape(app)


@pytest.mark.parametrize("headers, code", [
    ({}, 401),
    ({"Authorization": "Bearer nope"}, 401),
    ({"X-API-Key": "nope"}, 401),
    ({"Authorization": f"Bearer {TOKEN}"}, 200),
    ({"X-API-Key": TOKEN}, 200),
], ids=["none", "wrong-bearer", "wrong-api-key", "bearer", "api-key"])
def test_metrics_require_the_token_when_one_is_configured(make_app, redis_url, headers, code):
    app = make_app(service_env(redis_url))
    response = app.test_client().get("/metrics", headers=headers)
    assert response.status_code == code
    if code == 401:
        assert response.get_json() == {"error": "unauthorized"}


def test_metrics_mark_a_stale_answer_and_leave_out_counters_they_cannot_read(make_app, private_redis):
    app = make_app(service_env(private_redis.url))
    private_redis.pause()
    try:
        families = scrape(app, **bearer())
    finally:
        private_redis.resume()
    assert families["render_signal_status_stale"].samples[0].value == 1
    assert families["render_signal_up"].samples[0].value == 1
    assert "render_signal_emails_seen" not in families
    assert "render_signal_lease_held" not in families  # unknown, not "0": do not page on a store outage


def test_metrics_speak_openmetrics_when_the_scraper_asks_for_it(make_app, redis_url):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

    app = make_app(service_env(redis_url))
    busy_cluster(app)
    response = app.test_client().get("/metrics", headers={
        **bearer(), "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    # The OpenMetrics parser rejects two families of one name (e.g. a dead_letters counter and gauge).
    families = {family.name: family for family in parse_openmetrics(response.get_data(as_text=True))}
    assert families["render_signal_emails_seen"].samples[0].value == 7


def test_counters_carry_their_mailbox_target_and_reason_labels_in_one_format(make_app, redis_url):
    # Given counts of two mailboxes and a delivery to a second target, in the store's key format
    app = make_app(service_env(redis_url))
    publish_holder_status(app.extensions["render_signal"])
    store = app.extensions["render_signal"].store
    store.incr("emails_seen", 2, labels={"mailbox": "default"})
    store.incr("emails_seen", 5, labels={"mailbox": "work"})
    store.incr("emails_skipped", label="no_delivery_links", labels={"mailbox": "work"})
    # When /metrics and /api/status are read
    families = scrape(app, **bearer())
    status = app.test_client().get("/api/status", headers=bearer()).get_json()
    # Then each series is one sample with exactly its labels, and the status route shows the same series
    assert samples(families["render_signal_emails_seen"]) == {
        ("render_signal_emails_seen_total", (("mailbox", "default"),)): 2.0,
        ("render_signal_emails_seen_total", (("mailbox", "work"),)): 5.0}
    assert samples(families["render_signal_emails_skipped"]) == {
        ("render_signal_emails_skipped_total", (("mailbox", "work"), ("reason", "no_delivery_links"))): 1.0}
    assert {"name": "emails_seen", "labels": {"mailbox": "work"}, "value": 5} in status["counter_series"]
    assert status["counters"]["emails_seen"] == 7  # the by-reason view sums over mailboxes
    never_moved = samples(families["render_signal_webhooks_delivered"])
    assert never_moved == {("render_signal_webhooks_delivered_total", ()): 0.0}
