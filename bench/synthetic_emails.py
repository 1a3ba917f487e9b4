"""Seeded generator of synthetic notification emails for the parsing benchmark.

Size mix (issue 10): 60% plain text or small HTML (< 20 KB), 30% 20-200 KB, 10% 200 KB-1 MB; each email carries 0-3
provider links (SYNTH tokens from provider_urls.md, never real links). Same seed, same bytes.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime

WORDS = ("files", "ready", "project", "delivery", "render", "final", "version", "please", "download", "the",
         "your", "transfer", "expires", "in", "seven", "days", "mix", "master", "stems", "photos", "übersetzt",
         "prêt", "日本語", "ok")

LINK_TEMPLATES = (
    "https://www.dropbox.com/scl/fi/{tok21}/Project%20Files.zip?rlkey={tok25}&st={tok8}&dl=0",
    "https://www.dropbox.com/scl/fo/{tok21}/{tok23}?rlkey={tok25}&dl=0",
    "https://www.dropbox.com/s/{tok15}/render_{n}.mov?dl=0",
    "https://we.tl/t-{tok10}",
    "https://wetransfer.com/downloads/{hex32}20250101120000/{hex32}20250101120001/{hex6}",
    "https://fromsmash.com/{tok10}-dt",
    "https://www.swisstransfer.com/d/{uuid}",
)


def _token(rng: random.Random, n: int, alphabet: str = "abcdefghijklmnopqrstuvwxyz0123456789") -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _link(rng: random.Random) -> str:
    template = rng.choice(LINK_TEMPLATES)
    hexd = "0123456789abcdef"
    return template.format(
        tok21=_token(rng, 21), tok25=_token(rng, 25), tok8=_token(rng, 8), tok23=_token(rng, 23),
        tok15=_token(rng, 15), tok10=_token(rng, 10), n=rng.randint(1, 99), hex32=_token(rng, 32, hexd),
        hex6=_token(rng, 6, hexd),
        uuid=f"{_token(rng, 8, hexd)}-{_token(rng, 4, hexd)}-4{_token(rng, 3, hexd)}-8{_token(rng, 3, hexd)}-"
             f"{_token(rng, 12, hexd)}",
    )


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))).capitalize() + "."


def _html_body(rng: random.Random, target: int, links: list[str]) -> str:
    rows: list[str] = ["<html><head><style>td{font-family:Arial}</style><title>Transfer</title></head><body>",
                       '<table width="600" cellpadding="0"><tr><td><img src="https://cdn.example.invalid/logo.png">'
                       "</td></tr>"]
    size = sum(map(len, rows))
    link_slots = sorted(rng.sample(range(40), len(links))) if links else []
    index = 0
    while size < target:
        if link_slots and index == link_slots[0]:
            link_slots.pop(0)
            url = links.pop(0).replace("&", "&amp;")
            row = f'<tr><td><p>Your files:</p><a href="{url}" style="color:#17e">Download</a></td></tr>'
        else:
            row = (f'<tr><td style="padding:8px"><p class="c{index % 7}">{_sentence(rng)} <b>{_sentence(rng)}</b>'
                   f'</p><div><span>{_sentence(rng)}</span></div></td></tr>')
        rows.append(row)
        size += len(row)
        index += 1
    for url in links:  # slots beyond the size reached
        rows.append(f'<tr><td><a href="{url.replace("&", "&amp;")}">Download</a></td></tr>')
    rows.append("</table></body></html>")
    return "\n".join(rows)


def _plain_body(rng: random.Random, target: int, links: list[str]) -> str:
    lines: list[str] = []
    size = 0
    while size < target:
        line = _sentence(rng)
        lines.append(line)
        size += len(line) + 1
    for url in links:
        lines.insert(rng.randint(0, len(lines)), f"Download: {url}")
    return "\n".join(lines)


def make_email(rng: random.Random, index: int) -> bytes:
    roll = rng.random()
    if roll < 0.6:
        target = rng.randint(500, 19_000)
    elif roll < 0.9:
        target = rng.randint(20_000, 200_000)
    else:
        target = rng.randint(200_000, 1_000_000)
    links = [_link(rng) for _ in range(rng.randint(0, 3))]
    msg = EmailMessage()
    msg["From"] = f"Sender {index} <sender{index}@example.com>"
    msg["To"] = "inbox@example.com"
    msg["Subject"] = f"Fichiers prêts n°{index}: {_sentence(rng)[:40]}"
    msg["Date"] = format_datetime(datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=index))
    msg["Message-ID"] = f"<bench-{index}@example.com>"
    plain_only = target < 19_000 and rng.random() < 0.5
    if plain_only:
        msg.set_content(_plain_body(rng, target, list(links)), cte=rng.choice(("quoted-printable", "base64")))
    else:
        html = _html_body(rng, target, list(links))
        msg.set_content(_plain_body(rng, min(2000, target // 10), []), cte="quoted-printable")
        msg.add_alternative(html, subtype="html", cte=rng.choice(("quoted-printable", "base64")))
    return msg.as_bytes()


def generate(count: int = 200, seed: int = 20250601) -> list[bytes]:
    rng = random.Random(seed)
    return [make_email(rng, index) for index in range(count)]


if __name__ == "__main__":  # pragma: no cover
    emails = generate()
    sizes = sorted(len(e) for e in emails)
    print(f"{len(emails)} emails, total {sum(sizes) / 1e6:.1f} MB, median {sizes[len(sizes) // 2]} B, "
          f"max {sizes[-1]} B")
