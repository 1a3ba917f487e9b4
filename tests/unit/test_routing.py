"""Routes (issue 17, "Route semantics"): AND across keys, OR within a list, first match wins unless ``continue``,
``drop`` skips with ``route_drop``, nothing matching skips with ``no_route`` / ``no_delivery_links``."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from config import RouteConfig, RouteMatch
from email_processing.orchestrator import sender_allowed
from email_processing.routing import (
    REASON_NO_ROUTE,
    REASON_ROUTE_DROP,
    SUBJECT_MATCH_CHARS,
    RouteDecision,
    Router,
    route_email,
)


def decide(routes: list[RouteConfig], **email: Any) -> RouteDecision:
    fields: dict[str, Any] = dict(mailbox_id="studio", sender="client@example.com", subject="Final cut",
                                  providers=("dropbox",), has_links=True)
    fields.update(email)
    return route_email(routes, **fields)


def to(*targets: str, continue_: bool = False, **match: Any) -> RouteConfig:
    return RouteConfig(match=RouteMatch(**match), to=targets, continue_=continue_)


def drop(continue_: bool = False, **match: Any) -> RouteConfig:
    return RouteConfig(match=RouteMatch(**match), drop=True, continue_=continue_)


SENT_TO_A = RouteDecision(targets=("a",))


# --- each key ---------------------------------------------------------------------------------------------------

def test_a_route_without_keys_takes_every_email_with_links():
    assert decide([to("a")]) == SENT_TO_A
    assert decide([to("a")]).send


def test_mailboxes_match_any_listed_mailbox_and_no_other():
    route = to("a", mailboxes=("studio", "team"))
    assert decide([route], mailbox_id="team") == SENT_TO_A
    assert decide([route], mailbox_id="studio") == SENT_TO_A
    assert decide([route], mailbox_id="other") == RouteDecision(reason=REASON_NO_ROUTE)


def test_senders_match_an_address_or_a_domain_case_insensitively():
    route = to("a", senders=("Client@Example.com", "@Agency.example"))
    assert decide([route], sender="CLIENT@example.COM") == SENT_TO_A
    assert decide([route], sender="anyone@agency.EXAMPLE") == SENT_TO_A
    assert decide([route], sender="other@example.com").reason == REASON_NO_ROUTE
    # a domain entry names that domain, not its subdomains (as the allow-list)
    assert decide([route], sender="x@sub.agency.example").reason == REASON_NO_ROUTE


@pytest.mark.parametrize("sender", ["client@example.com", "x@agency.example", "X@AGENCY.EXAMPLE", "nobody",
                                    "", None, "client@example.com.evil", "a@b@agency.example"])
def test_senders_decide_exactly_as_the_mailbox_allow_list(sender):
    entries = ("client@example.com", "@agency.example")
    routed = decide([to("a", senders=entries)], sender=sender).send
    assert routed == sender_allowed(sender or "", entries)


def test_an_email_without_a_sender_address_never_matches_a_senders_key():
    assert decide([to("a", senders=("@example.com",))], sender=None).reason == REASON_NO_ROUTE
    assert decide([to("a", senders=("@example.com",))], sender="").reason == REASON_NO_ROUTE
    assert decide([to("a")], sender=None) == SENT_TO_A  # no senders key: the sender is not asked


def test_subject_is_a_regex_searched_anywhere_in_the_subject():
    route = to("a", subject="(?i)final")
    assert decide([route], subject="Re: the FINAL cut") == SENT_TO_A
    assert decide([route], subject="draft").reason == REASON_NO_ROUTE
    assert decide([to("a", subject="^cut")], subject="Final cut").reason == REASON_NO_ROUTE
    assert decide([to("a", subject="cut$")], subject="Final cut") == SENT_TO_A


def test_a_missing_subject_is_searched_as_the_empty_string():
    assert decide([to("a", subject="^$")], subject=None) == SENT_TO_A
    assert decide([to("a", subject="x")], subject=None).reason == REASON_NO_ROUTE


def test_the_subject_is_cut_to_998_characters_before_matching():
    # Given a subject whose marker sits just past the cap
    subject = "x" * SUBJECT_MATCH_CHARS + "MARK"
    # Then a regex looking for the marker, or for more than the cap, does not see it
    assert SUBJECT_MATCH_CHARS == 998
    assert decide([to("a", subject="MARK")], subject=subject).reason == REASON_NO_ROUTE
    assert decide([to("a", subject="x{999}")], subject=subject).reason == REASON_NO_ROUTE
    assert decide([to("a", subject="^x{998}$")], subject=subject) == SENT_TO_A
    assert decide([to("a", subject="MARK")], subject=subject[1:]).reason == REASON_NO_ROUTE
    assert decide([to("a", subject="MARK")], subject=subject[4:]) == SENT_TO_A


def test_a_polynomial_subject_regex_on_a_huge_subject_stays_cheap():
    # Given a pattern whose search is quadratic in the text (x* from every start) and a 1 MB hostile subject:
    # uncut, about 5e11 steps; cut to 998 characters, about 5e5
    started = time.perf_counter()
    decision = decide([to("a", subject=r"x*z")], subject="x" * 1_000_000)
    assert decision.reason == REASON_NO_ROUTE
    assert time.perf_counter() - started < 2.0


def test_providers_match_when_any_link_is_of_a_listed_provider():
    route = to("a", providers=("wetransfer", "fromsmash"))
    assert decide([route], providers=("dropbox", "wetransfer")) == SENT_TO_A
    assert decide([route], providers=["fromsmash"]) == SENT_TO_A
    assert decide([route], providers={"dropbox"}).reason == REASON_NO_ROUTE
    assert decide([route], providers=(), has_links=True).reason == REASON_NO_ROUTE


def test_has_links_unset_or_true_matches_only_emails_with_links():
    for route in (to("a"), to("a", has_links=True)):
        assert decide([route], has_links=True, providers=("dropbox",)) == SENT_TO_A
        assert decide([route], has_links=False, providers=()) == RouteDecision(reason="no_delivery_links")


def test_has_links_false_matches_only_emails_without_links():
    route = to("a", has_links=False)
    assert decide([route], has_links=False, providers=()) == SENT_TO_A
    assert decide([route], has_links=True) == RouteDecision(reason=REASON_NO_ROUTE)


# --- combining keys ---------------------------------------------------------------------------------------------

def test_every_key_of_a_match_must_hold():
    route = to("a", mailboxes=("studio",), senders=("@example.com",), subject="(?i)final", providers=("dropbox",),
               has_links=True)
    assert decide([route]) == SENT_TO_A
    # each key failing alone is enough to refuse
    for change in (dict(mailbox_id="team"), dict(sender="x@other.example"), dict(subject="draft"),
                   dict(providers=("wetransfer",)), dict(has_links=False, providers=())):
        assert decide([route], **change).send is False, change


# --- order, continue, drop ---------------------------------------------------------------------------------------

def test_the_first_matching_route_wins():
    routes = [to("a", mailboxes=("team",)), to("b", providers=("dropbox",)), to("c")]
    assert decide(routes) == RouteDecision(targets=("b",))
    assert decide(routes, mailbox_id="team") == SENT_TO_A


def test_a_route_sends_to_every_target_it_names_in_order():
    assert decide([to("b", "a", "c")]) == RouteDecision(targets=("b", "a", "c"))


def test_continue_collects_targets_and_goes_on_to_the_next_routes():
    routes = [to("archive", continue_=True), to("skipped", mailboxes=("team",)), to("b", "archive"), to("never")]
    # targets in order of first appearance, each once; the first non-continue match stops
    assert decide(routes) == RouteDecision(targets=("archive", "b"))


def test_targets_collected_by_continue_routes_are_sent_when_nothing_else_matches():
    routes = [to("archive", continue_=True), to("b", mailboxes=("team",))]
    assert decide(routes) == RouteDecision(targets=("archive",))


def test_a_drop_route_skips_the_email_with_route_drop():
    routes = [drop(senders=("@spam.example",)), to("a")]
    assert decide(routes, sender="x@spam.example") == RouteDecision(reason=REASON_ROUTE_DROP)
    assert not decide(routes, sender="x@spam.example").send
    assert decide(routes) == SENT_TO_A


def test_a_drop_after_continue_routes_stops_there_and_sends_what_was_collected():
    routes = [to("archive", continue_=True), drop(subject="newsletter"), to("b")]
    assert decide(routes, subject="weekly newsletter") == RouteDecision(targets=("archive",))
    assert decide(routes) == RouteDecision(targets=("archive", "b"))


def test_a_drop_route_marked_continue_still_stops_the_search():
    routes = [drop(continue_=True, subject="newsletter"), to("a")]
    assert decide(routes, subject="newsletter") == RouteDecision(reason=REASON_ROUTE_DROP)
    routes = [to("archive", continue_=True), drop(continue_=True, subject="newsletter"), to("a")]
    assert decide(routes, subject="newsletter") == RouteDecision(targets=("archive",))


def test_no_matching_route_skips_an_email_with_links_as_no_route():
    assert decide([to("a", mailboxes=("team",))]) == RouteDecision(reason=REASON_NO_ROUTE)
    assert decide([]) == RouteDecision(reason=REASON_NO_ROUTE)


def test_no_matching_route_skips_an_email_without_links_as_no_delivery_links():
    assert decide([to("a")], has_links=False, providers=()) == RouteDecision(reason="no_delivery_links")
    assert decide([], has_links=False, providers=()) == RouteDecision(reason="no_delivery_links")


def test_the_environment_forms_routes_send_links_always_and_no_links_only_when_allowed():
    with_links_only = [to("default")]
    both = [to("default"), to("default", has_links=False)]
    assert decide(with_links_only) == RouteDecision(targets=("default",))
    assert decide(with_links_only, has_links=False, providers=()).reason == "no_delivery_links"
    assert decide(both, has_links=False, providers=()) == RouteDecision(targets=("default",))


# --- the router -------------------------------------------------------------------------------------------------

def test_a_router_compiles_each_subject_regex_once(monkeypatch):
    # Given a router built from routes with subjects (RouteMatch itself compiles once to validate: before counting)
    routes = [to("a", subject="(?i)final"), to("b", subject="draft")]
    calls: list[str] = []
    real_compile = re.compile

    def counting_compile(pattern, flags=0):
        calls.append(pattern)
        return real_compile(pattern, flags)

    monkeypatch.setattr(re, "compile", counting_compile)
    router = Router(routes)
    assert calls == ["(?i)final", "draft"]
    # When it routes many emails, Then nothing is compiled again
    for index in range(50):
        router.route(mailbox_id="studio", sender=None, subject=f"draft {index}", providers=(), has_links=True)
    assert calls == ["(?i)final", "draft"]
    assert router.route(mailbox_id="s", sender=None, subject="draft", providers=(),
                        has_links=True) == RouteDecision(targets=("b",))


def test_a_router_decides_like_route_email():
    routes = [to("archive", continue_=True), drop(senders=("@spam.example",)), to("b", providers=("dropbox",))]
    router = Router(routes)
    for sender in ("x@spam.example", "y@example.com"):
        for providers in ((), ("dropbox",), ("wetransfer",)):
            email = dict(mailbox_id="studio", sender=sender, subject="s", providers=providers,
                         has_links=bool(providers))
            assert router.route(**email) == route_email(routes, **email)


def test_a_decision_is_a_frozen_value():
    decision = decide([to("a")])
    with pytest.raises(AttributeError):
        decision.targets = ("b",)  # type: ignore[misc]
