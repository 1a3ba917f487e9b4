"""The decision for one parsed email: who sent it, which delivery links it carries, what the webhook says.

``process_email`` is pure apart from the injected ``Offloader``: sender filter first (with an allow-list: a From
header that names no single unambiguous mailbox is ``sender_ambiguous``, an address off the list
``sender_not_allowed``, and, when the mailbox authenticates senders, one the trusted Authentication-Results header
does not vouch for ``sender_not_authenticated``; see ``email_processing.sender``), then the links
(``no_delivery_links`` unless emails without links are allowed), the R2 offload only for emails that will be sent,
and the payload always (the dry run prints it for skipped emails too). The links of an email skipped for its sender
are looked for only when the caller asks (the dry run does): the poller never spends link extraction on mail it will
not act on. At most ``max_links`` links are kept (MAX_LINKS_PER_EMAIL), the first in document order, before the
offload: one email never costs more Worker calls than that. Skip reasons are snake_case: they are metric labels and
``skipped:<reason>`` done records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence

from config import DEFAULT_ID, DEFAULT_MAX_LINKS_PER_EMAIL, SenderAuth
from email_processing.html_text import html_to_text_and_hrefs
from email_processing.identity import email_id_for, event_id_for
from email_processing.links import MAX_CANDIDATES_CHECKED, DeliveryLink, LinkLike, RefusedLink, extract_links
from email_processing.parsing import ParsedEmail
from email_processing.payload import build_payload
from email_processing.sender import authenticate_sender

logger = logging.getLogger(__name__)

REASON_SENDER_AMBIGUOUS = "sender_ambiguous"
REASON_SENDER_NOT_ALLOWED = "sender_not_allowed"
REASON_SENDER_NOT_AUTHENTICATED = "sender_not_authenticated"
REASON_NO_DELIVERY_LINKS = "no_delivery_links"


@dataclass(frozen=True)
class OffloadedLink:
    provider: str
    raw_url: str
    direct_url: str
    r2_url: str | None = None
    original_filename: str | None = None


class Offloader(Protocol):
    def offload_links(self, email_id: str, links: list[DeliveryLink]) -> list[OffloadedLink]:
        """One OffloadedLink per link, same order; never raises (falls back to the source URLs)."""
        ...

    def offloads_any(self, links: Sequence[LinkLike]) -> bool:
        """Whether any of ``links`` would be copied (the email is then worth enriching in the background)."""
        ...


class NullOffloader:
    """R2 off (or a dry run): every link keeps its source URLs."""

    def offload_links(self, email_id: str, links: Sequence[LinkLike]) -> list[OffloadedLink]:
        return [source_only(link) for link in links]

    def offloads_any(self, links: Sequence[LinkLike]) -> bool:
        return False

    def close(self) -> None:
        pass


def source_only(link: LinkLike) -> OffloadedLink:
    return OffloadedLink(provider=link.provider, raw_url=link.raw_url, direct_url=link.direct_url)


@dataclass(frozen=True)
class ProcessResult:
    decision: Literal["send", "skip"]
    reason: str | None
    payload: dict[str, Any]
    email_id: str
    event_id: str
    links: tuple[OffloadedLink, ...]
    # delivery links found beyond the cap and dropped, plus candidates left unchecked past MAX_CANDIDATES_CHECKED
    # (payload: delivery_links_truncated)
    links_truncated: int = 0
    refused_links: tuple[RefusedLink, ...] = ()  # counted and logged by ingest (provider and host, never the URL)


def sender_allowed(sender_email: str, allowlist: Sequence[str]) -> bool:
    """True when the allowlist is empty, names the address, or names its domain as ``@domain``."""
    if not allowlist:
        return True
    address = (sender_email or "").strip().lower()
    if not address or "@" not in address:
        return False
    domain = "@" + address.rsplit("@", 1)[1]
    for entry in allowlist:
        entry = entry.strip().lower()
        if entry and (entry == address or (entry.startswith("@") and entry == domain)):
            return True
    return False


def sender_skip_reason(parsed: ParsedEmail, allowlist: Sequence[str], auth: SenderAuth | None) -> str | None:
    """Why the sender filter skips ``parsed``, or None. Without an allow-list nothing is checked (everyone counts,
    an ambiguous From header included); authentication is asked only of an allow-listed, unambiguous sender."""
    if not allowlist:
        return None
    if parsed.sender_problem is not None:
        logger.info("ORCHESTRATOR: From header is not one unambiguous mailbox (%s)", parsed.sender_problem)
        return REASON_SENDER_AMBIGUOUS
    if not sender_allowed(parsed.sender_email, allowlist):
        return REASON_SENDER_NOT_ALLOWED
    if auth is not None:
        verdict = authenticate_sender(parsed.sender_email, parsed.authentication_results, auth)
        if not verdict.authenticated:
            logger.info("ORCHESTRATOR: allow-listed sender not authenticated: %s", verdict.why)
            return REASON_SENDER_NOT_AUTHENTICATED
    return None


def process_email(parsed: ParsedEmail, *, received_at: str, sender_allowlist: Sequence[str],
                  allow_without_links: bool, offloader: Offloader, mailbox_id: str = DEFAULT_ID,
                  email_id: str | None = None, extract_when_skipped: bool = False,
                  max_links: int = DEFAULT_MAX_LINKS_PER_EMAIL, sender_auth: SenderAuth | None = None) -> ProcessResult:
    """Decide send/skip for one email of mailbox ``mailbox_id`` and build its webhook payload for target
    ``default`` (offloading links to R2 only when sending). ``email_id``: the id ingest decided (see
    ``email_processing.identity``; by default that of the Message-ID). ``extract_when_skipped``: look for the links
    of an email skipped for its sender too (the dry run prints them); otherwise its payload lists none.
    ``max_links``: the first links kept (MAX_LINKS_PER_EMAIL); the result counts the others in ``links_truncated``.
    ``sender_auth``: the mailbox's sender authentication (None: off)."""
    if email_id is None:
        email_id = email_id_for(parsed, mailbox_id)
    html_text, hrefs = html_to_text_and_hrefs(parsed.html) if parsed.html else ("", [])

    reason = sender_skip_reason(parsed, sender_allowlist, sender_auth)
    found: list[DeliveryLink] = []
    refused: tuple[RefusedLink, ...] = ()
    unchecked = 0
    if reason is None or extract_when_skipped:
        found, refused, unchecked = extract_links("\n".join((parsed.text_plain, html_text)), hrefs,
                                                  html_source=parsed.html)
    if reason is None and not found and not allow_without_links:
        reason = REASON_NO_DELIVERY_LINKS
    dropped = max(len(found) - max_links, 0)
    if dropped:
        found = found[:max_links]
        # Counts only: a URL is a capability and never goes to the log.
        logger.warning("ORCHESTRATOR: links capped mailbox=%s email_id=%s kept=%d found=%d (MAX_LINKS_PER_EMAIL)",
                       mailbox_id, email_id, len(found), len(found) + dropped)
    if unchecked:
        logger.warning("ORCHESTRATOR: link candidates left unchecked mailbox=%s email_id=%s checked=%d unchecked=%d "
                       "(at most this many per email)", mailbox_id, email_id, MAX_CANDIDATES_CHECKED, unchecked)

    if reason is None:
        links = _offload(offloader, email_id, found)
    else:
        links = tuple(source_only(link) for link in found)

    payload = build_payload(parsed, links, received_at, html_text=html_text, email_id=email_id,
                            delivery_links_truncated=bool(dropped or unchecked))
    decision: Literal["send", "skip"] = "skip" if reason else "send"
    logger.debug("ORCHESTRATOR: %s decision=%s reason=%s links=%s", email_id, decision, reason, len(links))
    return ProcessResult(decision=decision, reason=reason, payload=payload, email_id=email_id,
                         event_id=event_id_for(email_id), links=links, links_truncated=dropped + unchecked,
                         refused_links=refused)


def _offload(offloader: Offloader, email_id: str, found: list[DeliveryLink]) -> tuple[OffloadedLink, ...]:
    if not found:
        return ()
    try:
        offloaded = list(offloader.offload_links(email_id, list(found)))
    except Exception:  # the offloader promises not to raise; if it does, R2 is an optimisation, never a dependency
        logger.warning("ORCHESTRATOR: offloader failed for %s; sending source URLs", email_id, exc_info=True)
        return tuple(source_only(link) for link in found)
    if len(offloaded) != len(found):
        logger.warning("ORCHESTRATOR: offloader returned %s links for %s, expected %s; sending source URLs",
                       len(offloaded), email_id, len(found))
        return tuple(source_only(link) for link in found)
    return tuple(offloaded)
