"""The decision for one parsed email: who sent it, which delivery links it carries, what the webhook says.

``process_email`` is pure apart from the injected ``Offloader``: sender filter first (``sender_not_allowed``), then
the links (``no_delivery_links`` unless emails without links are allowed), the R2 offload only for emails that will
be sent, and the payload always (the dry run prints it for skipped emails too). Skip reasons are snake_case: they
are metric labels and ``skipped:<reason>`` done records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence

from config import DEFAULT_ID
from email_processing.html_text import html_to_text_and_hrefs
from email_processing.identity import email_id_for, event_id_for
from email_processing.links import DeliveryLink, LinkLike, RefusedLink, extract_links
from email_processing.parsing import ParsedEmail
from email_processing.payload import build_payload

logger = logging.getLogger(__name__)

REASON_SENDER_NOT_ALLOWED = "sender_not_allowed"
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


class NullOffloader:
    """R2 off (or a dry run): every link keeps its source URLs."""

    def offload_links(self, email_id: str, links: Sequence[LinkLike]) -> list[OffloadedLink]:
        return [source_only(link) for link in links]

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


def process_email(parsed: ParsedEmail, *, received_at: str, sender_allowlist: Sequence[str],
                  allow_without_links: bool, offloader: Offloader, mailbox_id: str = DEFAULT_ID,
                  email_id: str | None = None) -> ProcessResult:
    """Decide send/skip for one email of mailbox ``mailbox_id`` and build its webhook payload for target
    ``default`` (offloading links to R2 only when sending). ``email_id``: the id ingest decided (see
    ``email_processing.identity``; by default that of the Message-ID)."""
    if email_id is None:
        email_id = email_id_for(parsed, mailbox_id)
    html_text, hrefs = html_to_text_and_hrefs(parsed.html) if parsed.html else ("", [])
    found, refused = extract_links("\n".join((parsed.text_plain, html_text)), hrefs, html_source=parsed.html)

    reason: str | None = None
    if not sender_allowed(parsed.sender_email, sender_allowlist):
        reason = REASON_SENDER_NOT_ALLOWED
    elif not found and not allow_without_links:
        reason = REASON_NO_DELIVERY_LINKS

    if reason is None:
        links = _offload(offloader, email_id, found)
    else:
        links = tuple(source_only(link) for link in found)

    payload = build_payload(parsed, links, received_at, html_text=html_text, email_id=email_id)
    decision: Literal["send", "skip"] = "skip" if reason else "send"
    logger.debug("ORCHESTRATOR: %s decision=%s reason=%s links=%s", email_id, decision, reason, len(links))
    return ProcessResult(decision=decision, reason=reason, payload=payload, email_id=email_id,
                         event_id=event_id_for(email_id), links=links, refused_links=refused)


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
