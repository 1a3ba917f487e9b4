"""/metrics: each target's circuit and delivery window (issue 17) and each mailbox's reauth_required (issue 18) as
gauges, from the status document's targets[] and mailboxes[]."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from routes.operator import StatusCollector


def metrics_of(targets: list[dict], mailboxes: list[dict] | None = None) -> str:
    registry = CollectorRegistry()
    registry.register(StatusCollector({"targets": targets, "mailboxes": mailboxes or []}))
    return generate_latest(registry).decode()


def test_an_open_or_half_open_circuit_is_1_and_a_closed_one_0():
    text = metrics_of([{"id": "make", "circuit": "open"}, {"id": "n8n", "circuit": "half_open"},
                       {"id": "zapier", "circuit": "closed"}])
    assert 'render_signal_target_circuit_open{target="make"} 1.0' in text
    assert 'render_signal_target_circuit_open{target="n8n"} 1.0' in text
    assert 'render_signal_target_circuit_open{target="zapier"} 0.0' in text


def test_a_target_whose_circuit_no_holder_reported_has_no_circuit_series():
    text = metrics_of([{"id": "make", "circuit": None}])
    assert 'render_signal_target_circuit_open{target="make"}' not in text


def test_only_targets_with_a_window_have_a_window_series_1_while_open():
    text = metrics_of([{"id": "office", "window": {"open": False, "opens_at": "2026-12-07T07:00:00.000Z"}},
                       {"id": "always", "window": None}, {"id": "open", "window": {"open": True}}])
    assert 'render_signal_target_window_open{target="office"} 0.0' in text
    assert 'render_signal_target_window_open{target="open"} 1.0' in text
    assert 'render_signal_target_window_open{target="always"}' not in text


def test_a_mailbox_whose_oauth2_sign_in_needs_an_operator_is_1_the_others_0():
    text = metrics_of([], [{"id": "studio", "imap": "reauth_required", "lease": {"held": True}},
                           {"id": "sales", "imap": "ok", "lease": {"held": True}}])
    assert 'render_signal_mailbox_reauth_required{mailbox="studio"} 1.0' in text
    assert 'render_signal_mailbox_reauth_required{mailbox="sales"} 0.0' in text
