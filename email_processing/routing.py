"""Which targets an accepted email goes to: the ordered routes of the configuration, decided once per email.

Pure: a ``Router`` is built once from the ``RouteConfig`` values (each subject regex compiled there, not per email)
and ``Router.route`` decides from what the caller already knows of the email (mailbox id, sender address, decoded
subject, the providers of its links, whether it has any). Rules, in order (issue 17, "Route semantics"):

- a route matches when every key of its ``match`` holds (AND) and, within a key, any entry does (OR): ``mailboxes``
  names the email's mailbox; ``senders`` names its address or its ``@domain``, case-insensitively, by the very
  function of the mailbox allow-list (``orchestrator.sender_allowed``); ``subject`` is a regular expression *searched*
  in the decoded subject cut to ``SUBJECT_MATCH_CHARS`` (998) characters; ``providers`` names the provider of any of
  its links; ``has_links`` None or True matches emails with links only, False emails without links only;
- the first matching route decides, unless it says ``continue``: then its targets are collected and the next routes
  are tried too. Targets come out in order of first appearance, each once;
- a matching ``drop`` route always stops the search (its ``continue`` is ignored: dropping and going on says nothing).
  It skips the email (``route_drop``) only when no ``continue`` route collected targets before it; otherwise the
  email goes to the targets collected so far and nothing after the drop route is tried. So "send copies of
  everything to the archive, continue; drop newsletters" still archives the newsletters, and the drop only stops
  them reaching the routes below it;
- no route deciding and nothing collected: ``no_route`` for an email with links, ``no_delivery_links`` for one
  without (the skip reason of today for an email without links nobody takes).

An empty route list routes nothing (``no_route`` / ``no_delivery_links``): the environment form is one route to
target ``default``, built by ``ServiceConfig.from_settings``, not an implicit rule here.

Subject regexes and time: the pattern is the operator's, the subject the sender's. The 998-character cap (RFC 5322's
line limit, the longest subject a conforming sender writes on one line) bounds what a search can cost for any
pattern whose cost grows polynomially with the text, but Python's ``re`` has no timeout, so a pattern with nested
quantifiers (``(a+)+$``) can still backtrack exponentially on a crafted subject of a few dozen characters. Operators
must write patterns without nested unbounded repetition; the configuration loader could refuse the obvious shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Collection, Sequence

from config import RouteConfig
from email_processing.orchestrator import REASON_NO_DELIVERY_LINKS, sender_allowed

REASON_ROUTE_DROP = "route_drop"
REASON_NO_ROUTE = "no_route"
SUBJECT_MATCH_CHARS = 998  # the subject is cut to this many characters before a route's regex searches it


@dataclass(frozen=True)
class RouteDecision:
    """Where one email goes: ``targets`` (in order of first appearance, each once) and ``reason`` None, or no
    target and the skip reason (``route_drop``, ``no_route``, ``no_delivery_links``)."""

    targets: tuple[str, ...] = ()
    reason: str | None = None

    @property
    def send(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class _CompiledRoute:
    route: RouteConfig
    mailboxes: frozenset[str]
    subject: re.Pattern[str] | None
    providers: frozenset[str]
    wants_links: bool

    @classmethod
    def of(cls, route: RouteConfig) -> _CompiledRoute:
        match = route.match
        return cls(route=route, mailboxes=frozenset(match.mailboxes),
                   subject=re.compile(match.subject) if match.subject is not None else None,
                   providers=frozenset(provider.lower() for provider in match.providers),
                   wants_links=match.has_links is not False)

    def matches(self, *, mailbox_id: str, sender: str | None, subject: str, providers: frozenset[str],
                has_links: bool) -> bool:
        # Cheapest keys first; the regex last, so it runs only for emails every other key already accepts.
        if has_links != self.wants_links:
            return False
        if self.mailboxes and mailbox_id not in self.mailboxes:
            return False
        if self.providers and self.providers.isdisjoint(providers):
            return False
        if self.route.match.senders and not sender_allowed(sender or "", self.route.match.senders):
            return False
        return self.subject is None or self.subject.search(subject) is not None


class Router:
    """The routes of a configuration, compiled once; ``route`` decides for one email."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self._routes = tuple(_CompiledRoute.of(route) for route in routes)

    def route(self, *, mailbox_id: str, sender: str | None, subject: str | None, providers: Collection[str],
              has_links: bool) -> RouteDecision:
        """The decision for one email (see the module docstring for the rules)."""
        cut_subject = (subject or "")[:SUBJECT_MATCH_CHARS]
        link_providers = frozenset(provider.lower() for provider in providers)
        collected: dict[str, None] = {}  # an ordered set: first appearance wins
        for compiled in self._routes:
            if not compiled.matches(mailbox_id=mailbox_id, sender=sender, subject=cut_subject,
                                    providers=link_providers, has_links=has_links):
                continue
            route = compiled.route
            if route.drop:
                if not collected:
                    return RouteDecision(reason=REASON_ROUTE_DROP)
                break
            collected.update(dict.fromkeys(route.to))
            if not route.continue_:
                break
        if collected:
            return RouteDecision(targets=tuple(collected))
        return RouteDecision(reason=REASON_NO_ROUTE if has_links else REASON_NO_DELIVERY_LINKS)


def route_email(routes: Sequence[RouteConfig], *, mailbox_id: str, sender: str | None, subject: str | None,
                providers: Collection[str], has_links: bool) -> RouteDecision:
    """One email's decision from ``routes`` (compiles them: per email, keep a ``Router`` instead)."""
    return Router(routes).route(mailbox_id=mailbox_id, sender=sender, subject=subject, providers=providers,
                                has_links=has_links)
