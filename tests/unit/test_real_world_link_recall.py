"""Recall and precision of link detection on real-world URLs, in the shapes real mail carries them.

The URLs of ``tests/corpus/real_links/links.json`` were written by others (mailing-list mails and public code, listed
with their sources in ../shared/corpus/provider_urls.md); no permissively licensed corpus holds whole e-mails with
share links (the shared MANIFEST records the gap), so each URL is carried here in the forms mail clients and
gateways give it: a quoted plain-text reply, quoted-printable with soft line breaks, a Gmail HTML anchor (``&amp;``),
an Outlook SafeLinks wrapper, a Google redirect, and French prose with the link in parentheses. Each message goes
through the real parser and extractor. Recall (found / present) must be at least 0.95 overall and per provider;
precision is exact: nothing is reported for the URLs that are not share links, and every reported link has the
expected provider.
"""

from __future__ import annotations

import json
from collections import Counter
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from urllib.parse import quote

import pytest

from email_processing.html_text import html_to_text_and_hrefs
from email_processing.links import extract_delivery_links
from email_processing.parsing import parse_message

LINKS = json.loads((Path(__file__).resolve().parents[1] / "corpus" / "real_links" / "links.json")
                   .read_text("utf-8"))["links"]
RECALL_FLOOR = 0.95


def _message(plain: str | None = None, html: str | None = None, *, cte: str | None = None) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = "Camille <camille@studio.example>"
    message["To"] = "post@agency.example"
    message["Subject"] = "Re: les fichiers du tournage"
    if plain is not None:
        message.set_content(plain, cte=cte) if cte else message.set_content(plain)
    if html is not None:
        if plain is None:
            message.set_content(html, subtype="html")
        else:
            message.add_alternative(html, subtype="html")
    return message.as_bytes()


def quoted_reply(url: str) -> bytes:
    return _message(f"Merci !\n\nLe 3 mars, Alex a écrit :\n> Voici les rushes : <{url}>\n> Bonne journée\n")


def quoted_printable(url: str) -> bytes:
    # A long line forces soft line breaks inside the URL, and '=' in queries becomes '=3D'.
    return _message("Bonjour, les fichiers sont prêts, vous pouvez les télécharger ici : " + url + " à bientôt\n",
                    cte="quoted-printable")


def gmail_anchor(url: str) -> bytes:
    href = url.replace("&", "&amp;")
    return _message("voir le lien", f'<div dir="ltr">Les fichiers : <a href="{href}" target="_blank">ici</a></div>')


def safelinks(url: str) -> bytes:
    wrapped = ("https://eur01.safelinks.protection.outlook.com/?url=" + quote(url, safe="")
               + "&amp;data=05%7C01%7C%7Cabc%7C0%7C0%7C0&amp;sdata=xyz%3D&amp;reserved=0")
    return _message(None, f'<p>Téléchargez <a href="{wrapped}" originalsrc="{url}">les fichiers</a>.</p>')


def google_redirect(url: str) -> bytes:
    wrapped = "https://www.google.com/url?q=" + quote(url, safe="") + "&amp;sa=D&amp;source=editors&amp;ust=1"
    return _message(None, f'<p><a href="{wrapped}">{url[:40]}…</a></p>')


def french_parentheses(url: str) -> bytes:
    return _message(f"Les épreuves (lien : {url}). Dites-moi si ça marche !\n")


CARRIERS = (quoted_reply, quoted_printable, gmail_anchor, safelinks, google_redirect, french_parentheses)


def _providers_found(raw: bytes) -> list[str]:
    parsed = parse_message(raw)
    text, hrefs = html_to_text_and_hrefs(parsed.html)
    return [link.provider for link in
            extract_delivery_links(parsed.text_plain + "\n" + text, hrefs, html_source=parsed.html)]


def _measure() -> tuple[Counter, Counter, list[str]]:
    present: Counter = Counter()
    found: Counter = Counter()
    wrong: list[str] = []
    for entry in LINKS:
        for carrier in CARRIERS:
            providers = _providers_found(carrier(entry["url"]))
            expected = entry["expected"]
            if any(provider != expected for provider in providers) or len(providers) > 1:
                wrong.append(f"{carrier.__name__}: {providers} for a {expected} link ({entry['source']})")
            if expected is not None:
                present[expected] += 1
                found[expected] += int(providers == [expected])
    return present, found, wrong


@pytest.fixture(scope="module")
def measured() -> tuple[Counter, Counter, list[str]]:
    return _measure()


def test_the_real_world_set_covers_every_provider_and_non_links():
    providers = {entry["expected"] for entry in LINKS}
    assert {"dropbox", "wetransfer", "swisstransfer", "fromsmash", "gdrive", "onedrive", "sharepoint", "box",
            "pcloud", "mega", None} <= providers
    assert len(LINKS) >= 40


def test_recall_on_real_world_links_is_at_least_95_percent_overall_and_per_provider(measured):
    # Given every real-world URL in every carrier shape, When each message is parsed and its links extracted
    present, found, _ = measured
    # Then found / present is at least 0.95, overall and for each provider
    overall = sum(found.values()) / sum(present.values())
    print(f"real-world link recall: {sum(found.values())}/{sum(present.values())} = {overall:.3f}; "
          + ", ".join(f"{name} {found[name]}/{present[name]}" for name in sorted(present)))
    assert overall >= RECALL_FLOOR
    assert {name: found[name] / present[name] for name in present
            if found[name] / present[name] < RECALL_FLOOR} == {}


def test_no_real_world_url_is_reported_as_another_provider_or_when_it_is_not_a_share_link(measured):
    _, _, wrong = measured
    assert wrong == []
