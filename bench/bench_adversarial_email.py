"""Per-email cost of a 3 MB email written against link extraction (issue 16 defect 2), as a ratio to a normal 3 MB
email: target at most 2x.

Every email is multipart/alternative with ~1.5 MB of text/plain and ~1.5 MB of HTML (~3 MB on the wire; the parser
keeps 1 MiB of each part, the same for all of them):

- ``normal``: prose in table rows (bench_big_email's newsletter) with three provider links;
- ``paren_tail``: lines of a distinct provider URL each followed by 8,100 ``)`` (just under the 8,192-character
  candidate cap): the email of the issue, quadratic in the trailing-punctuation clean-up before the fix;
- ``punct_tail``: the same with 8,100 characters of trailing ``.,``;
- ``many_candidates``: ``https://we.tl/t-<n>) `` over and over, ~100,000 distinct short link candidates (the
  per-candidate classification, not the clean-up; bounded by MAX_CANDIDATES_CHECKED);
- ``refused_candidates``: ``https://u<n>@we.tl/t-<n> ``, as many distinct candidates that each claim WeTransfer and
  are refused (userinfo): none counts toward MAX_LINKS_PER_EMAIL, the check budget bounds them;
- ``off_list_hinted``: ``https://evil.example/we.tl/<n> ``, off the allow-list but naming a provider's domain, so
  the cheap pre-filter lets each through to a full check.

Timed: the whole pure path as the poller runs it, parse_message + process_email (NullOffloader, sender allowed) +
json.dumps + UTF-8, best of ``--repeat``, on one core. Also timed: ``paren_tail`` from a sender outside the allowlist
(the sender filter runs before link extraction; the dry run extracts anyway), and, unless ``--no-before``,
``paren_tail`` and ``punct_tail`` with the clean-up of before the fix (9f1f751's ``_strip_trailing``, re-created in
this process; one run each, ~7 s for ``paren_tail``). No network; nothing asserted.

    .venv/bin/python -m bench.bench_adversarial_email [--repeat 3] [--no-before]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from bench.bench_latency import result
from email_processing import links as links_module
from email_processing.orchestrator import NullOffloader, process_email
from email_processing.parsing import parse_message

PART_BYTES = 1_500_000
CANDIDATE_TAIL = 8_100
SENDER = "delivery@studio.example"
PROVIDER_LINKS = ("https://www.dropbox.com/scl/fi/aaaaaaaaaaaaaaaaaaaaa/master.mov?rlkey=bbbbbbbbbbbbbbbbbbbbbbbbb&dl=0",
                  "https://we.tl/t-AAAAAAAAAA", "https://fromsmash.com/CCCCCCCCCC-dt")


def email(kind: str, text: str, html: str) -> bytes:
    head = (f"From: Studio <{SENDER}>\r\nTo: bot@example.com\r\nSubject: {kind}\r\n"
            f"Date: Tue, 03 Jun 2025 10:00:00 +0200\r\nMessage-ID: <{kind}@bench.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/alternative; boundary=\"=_adv\"\r\n\r\n")
    return (head.encode() + b"--=_adv\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            + text.replace("\n", "\r\n").encode() + b"\r\n--=_adv\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            + html.replace("\n", "\r\n").encode() + b"\r\n--=_adv--\r\n")


def repeated(unit: Callable[[int], str], size: int) -> str:
    pieces, total, index = [], 0, 0
    while total < size:
        piece = unit(index)
        pieces.append(piece)
        total += len(piece)
        index += 1
    return "".join(pieces)


def normal_email(seed: int = 16) -> bytes:
    rng = random.Random(seed)
    words = ("files", "ready", "newsletter", "render", "final", "download", "weekly", "digest", "offer", "news")

    def sentence(_: int) -> str:
        return " ".join(rng.choice(words) for _ in range(12)) + ".\n"

    def row(n: int) -> str:
        text = " ".join(rng.choice(words) for _ in range(12))
        return f'<tr><td style="padding:8px"><p class="c{n % 7}">{text}</p><div><span>{text}</span></div></td></tr>\n'

    anchors = "".join(f'<tr><td><a href="{url.replace("&", "&amp;")}">Download</a></td></tr>\n'
                      for url in PROVIDER_LINKS)
    text = "Your files:\n" + "\n".join(PROVIDER_LINKS) + "\n" + repeated(sentence, PART_BYTES)
    html = f'<html><body><table width="600">\n{anchors}{repeated(row, PART_BYTES)}</table></body></html>\n'
    return email("normal", text, html)


def adversarial_email(kind: str) -> bytes:
    units: dict[str, Callable[[int], str]] = {
        # distinct links, so that no memo of a verdict hides the clean-up's cost
        "paren_tail": lambda n: f"https://we.tl/t-{n:08d}{')' * CANDIDATE_TAIL}\n",
        "punct_tail": lambda n: f"https://we.tl/t-{n:08d}{'.,' * (CANDIDATE_TAIL // 2)}\n",
        "many_candidates": lambda n: f"https://we.tl/t-{n:08d}) ",
        "refused_candidates": lambda n: f"https://u{n}@we.tl/t-{n:08d} ",
        "off_list_hinted": lambda n: f"https://evil.example/we.tl/{n:08d} ",
    }
    body = repeated(units[kind], PART_BYTES)
    return email(kind, body, f"<html><body><p>{body}</p></body></html>\n")


def pipeline(raw: bytes, allowlist: tuple[str, ...] = ()) -> tuple[str, int]:
    parsed = parse_message(raw)
    outcome = process_email(parsed, received_at="2025-06-03T08:00:00Z", sender_allowlist=allowlist,
                            allow_without_links=False, offloader=NullOffloader())
    json.dumps(outcome.payload, ensure_ascii=False).encode("utf-8")
    state = outcome.decision if outcome.reason is None else f"{outcome.decision}:{outcome.reason}"
    return state, len(outcome.links)


def timed(raw: bytes, repeat: int, allowlist: tuple[str, ...] = ()) -> tuple[float, str, int]:
    best, state, count = float("inf"), "", 0
    for _ in range(repeat):
        started = time.perf_counter()
        state, count = pipeline(raw, allowlist)
        best = min(best, time.perf_counter() - started)
    return best, state, count


def _strip_trailing_before_the_fix(url: str) -> str:
    """9f1f751's clean-up: counts and slices once per character stripped (quadratic)."""
    while url:
        last = url[-1]
        if last in links_module._TRAILING:
            url = url[:-1]
        elif last in links_module._CLOSERS and url.count(links_module._CLOSERS[last]) < url.count(last):
            url = url[:-1]
        else:
            break
    return url


@contextmanager
def clean_up_of_before_the_fix() -> Iterator[None]:
    current = links_module._strip_trailing
    links_module._strip_trailing = _strip_trailing_before_the_fix  # type: ignore[assignment]
    try:
        yield
    finally:
        links_module._strip_trailing = current  # type: ignore[assignment]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-before", action="store_true", help="skip the runs with the clean-up of before the fix")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the parser's "truncated" lines, the cap's line: not what is measured
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core

    normal = normal_email()
    base, state, count = timed(normal, args.repeat)
    print(f"adversarial 3 MB emails vs a normal 3 MB email: whole pure path (parse, text, links, decision, payload, "
          f"json.dumps), best of {args.repeat}, one core")
    print(f"  {'email':<34} {'bytes':>10} {'seconds':>9} {'ratio':>8}  end state")
    print(f"  {'normal':<34} {len(normal):>10,} {base:>9.3f} {1.0:>7.2f}x  {state}, {count} links")
    figures: dict[str, dict] = {}
    for kind in ("paren_tail", "punct_tail", "many_candidates", "refused_candidates", "off_list_hinted"):
        raw = adversarial_email(kind)
        seconds, state, count = timed(raw, args.repeat)
        figures[kind] = {"seconds": round(seconds, 3), "ratio": round(seconds / base, 2), "bytes": len(raw)}
        print(f"  {kind:<34} {len(raw):>10,} {seconds:>9.3f} {seconds / base:>7.2f}x  {state}, {count} links")
    paren = adversarial_email("paren_tail")
    skipped, state, _ = timed(paren, args.repeat, allowlist=("someone-else@example.com",))
    print(f"  {'paren_tail, sender not allowed':<34} {len(paren):>10,} {skipped:>9.3f} {skipped / base:>7.2f}x  "
          f"{state} (no link extraction)")
    before: dict[str, float] = {}
    if not args.no_before:
        with clean_up_of_before_the_fix():
            for kind in ("paren_tail", "punct_tail"):
                raw = adversarial_email(kind)
                seconds, state, count = timed(raw, 1)
                before[kind] = seconds
                label = f"{kind}, BEFORE THE FIX (1 run)"
                print(f"  {label:<34} {len(raw):>10,} {seconds:>9.3f} {seconds / base:>7.2f}x  {state}, {count} links")

    paren_tail, punct_tail, many = figures["paren_tail"], figures["punct_tail"], figures["many_candidates"]
    result("adversarial_email_ratio", paren_tail["ratio"], "x normal", normal_s=round(base, 3),
           seconds=paren_tail["seconds"], mb=round(len(paren) / 1e6, 2), punct_ratio=punct_tail["ratio"],
           sender_skipped_ratio=round(skipped / base, 2),
           details=f"normal {base:.3f} s, this one {paren_tail['seconds']:.3f} s; URLs ending in 8,100 '.,': "
                   f"{punct_tail['ratio']}x; sender not allowed (no extraction): {skipped / base:.2f}x")
    refused, hinted = figures["refused_candidates"], figures["off_list_hinted"]
    result("adversarial_many_candidates_ratio", many["ratio"], "x normal", normal_s=round(base, 3),
           seconds=many["seconds"], refused_ratio=refused["ratio"], off_list_hinted_ratio=hinted["ratio"],
           details=f"normal {base:.3f} s, this one {many['seconds']:.3f} s; refused candidates {refused['ratio']}x; "
                   f"off-list candidates naming a provider {hinted['ratio']}x")
    if before:
        result("adversarial_email_ratio_before_fix", round(before["paren_tail"] / base, 2), "x normal",
               normal_s=round(base, 3), seconds=round(before["paren_tail"], 3),
               punct_ratio=round(before["punct_tail"] / base, 2),
               details=f"normal {base:.3f} s, this one {before['paren_tail']:.3f} s; URLs ending in 8,100 '.,': "
                       f"{before['punct_tail'] / base:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
