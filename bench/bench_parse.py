"""Parsing throughput on one core over the seeded synthetic set (issue 10 targets: >= 100/s and >= 80/s).

Two measurements over the same 200 emails, best of ``--repeat`` runs:
- ``parse+text+links``: parse_message + html_to_text_and_hrefs + extract_delivery_links;
- ``whole path``: process_email (parse, links, decision, payload with a NullOffloader) + json.dumps of the payload.
No network. Run: ``.venv/bin/python -m bench.bench_parse [--count 200] [--repeat 3] [--profile]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from bench.synthetic_emails import generate
from email_processing.html_text import html_to_text_and_hrefs
from email_processing.links import extract_delivery_links
from email_processing.orchestrator import NullOffloader, process_email
from email_processing.parsing import parse_message
from email_processing.payload import received_at_from_date_header


def parse_text_links(raw: bytes) -> int:
    parsed = parse_message(raw)
    text, hrefs = html_to_text_and_hrefs(parsed.html)
    return len(extract_delivery_links(parsed.text_plain + "\n" + text, hrefs))


def whole_path(raw: bytes) -> int:
    parsed = parse_message(raw)
    result = process_email(parsed, received_at=received_at_from_date_header(parsed.date_header),
                           sender_allowlist=(), allow_without_links=False, offloader=NullOffloader())
    return len(json.dumps(result.payload, ensure_ascii=False))


def measure(function, emails: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for raw in emails:
            function(raw)
        best = min(best, time.perf_counter() - start)
    return len(emails) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20250601)
    parser.add_argument("--profile", action="store_true", help="cProfile the whole path, top 25 by cumulative time")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    emails = generate(args.count, args.seed)
    total_mb = sum(map(len, emails)) / 1e6
    links = sum(parse_text_links(raw) for raw in emails)
    print(f"emails: {len(emails)} (seed {args.seed}, {total_mb:.1f} MB, {links} delivery links found)")
    rate_parse = measure(parse_text_links, emails, args.repeat)
    rate_whole = measure(whole_path, emails, args.repeat)
    print(f"parse+text+links: {rate_parse:.1f} emails/s (target >= 100)")
    print(f"whole path (parse+links+decision+payload+json.dumps): {rate_whole:.1f} emails/s (target >= 80)")
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        for raw in emails:
            whole_path(raw)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
