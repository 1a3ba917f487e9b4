"""Per-email cost of damaged emails (issue 15): the pipeline's time on a mutated corpus email, as a ratio to the same
email unmutated.

Every corpus email of tests/corpus/ (or a seeded sample of ``--emails``) is timed unmutated and with ``--mutations``
single mutations of tests/fixtures/email_mutations.py (the kinds in turn, their variants drawn from a seeded
``random.Random``: the mutations the fuzzer tests/unit/test_fuzz_pipeline.py draws from). Timed: the whole pure path,
parse_message + process_email (NullOffloader, links required) + json.dumps + UTF-8, best of ``--repeat``, on one core.
Prints the ratio mutated/unmutated (median, p95, max) overall and per kind, the absolute times, the slowest email
and how to rebuild it, and how each run ended. No network; nothing asserted.

    .venv/bin/python -m bench.bench_fuzz [--emails N] [--mutations 21] [--repeat 3] [--seed 15]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench.bench_latency import percentile, result
from email_processing.orchestrator import NullOffloader, process_email
from email_processing.parsing import parse_message
from email_processing.payload import received_at_from_date_header
from tests.fixtures.email_mutations import MUTATION_KINDS, Mutation, mutate, random_mutation

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "corpus"


@dataclass(frozen=True)
class Sample:
    path: Path
    mutation: Mutation | None
    size: int
    seconds: float
    end_state: str


def corpus_messages() -> list[Path]:
    return sorted(path for path in CORPUS.rglob("*")
                  if path.is_file() and path.suffix not in (".json", ".md", ".py") and path.parent != CORPUS)


def pipeline(raw: bytes) -> str:
    """The whole per-email path without network; returns the end state (``send``, ``skip:<reason>``)."""
    parsed = parse_message(raw)
    outcome = process_email(parsed, received_at=received_at_from_date_header(parsed.date_header),
                            sender_allowlist=(), allow_without_links=False, offloader=NullOffloader())
    json.dumps(outcome.payload, ensure_ascii=False).encode("utf-8")
    return outcome.decision if outcome.reason is None else f"{outcome.decision}:{outcome.reason}"


def timed(raw: bytes, repeat: int) -> tuple[float, str]:
    best, end_state = float("inf"), ""
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            end_state = pipeline(raw)
        except Exception as exc:  # a crash is a finding of the fuzzer; here it is counted, not fatal
            end_state = f"crash:{type(exc).__name__}"
        best = min(best, time.perf_counter() - started)
    return best, end_state


def measure(paths: list[Path], mutations: int, repeat: int, rng: random.Random) -> tuple[list[Sample], list[Sample]]:
    plain: list[Sample] = []
    mutated: list[Sample] = []
    for path in paths:
        raw = path.read_bytes()
        seconds, end_state = timed(raw, repeat)
        plain.append(Sample(path, None, len(raw), seconds, end_state))
        for index in range(mutations):
            mutation = random_mutation(rng, [MUTATION_KINDS[index % len(MUTATION_KINDS)]])
            damaged = mutate(raw, [mutation])
            seconds, end_state = timed(damaged, repeat)
            mutated.append(Sample(path, mutation, len(damaged), seconds, end_state))
    return plain, mutated


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def report(plain: list[Sample], mutated: list[Sample], args: argparse.Namespace) -> None:
    base = {sample.path: sample.seconds for sample in plain}
    ratios = [sample.seconds / base[sample.path] for sample in mutated]
    plain_times = [sample.seconds for sample in plain]
    print(f"fuzz: {len(plain)} corpus emails x {args.mutations} single mutations (seed {args.seed}), "
          f"whole pure path, best of {args.repeat}, one core")
    print(f"unmutated per email: median {_ms(statistics.median(plain_times))}, "
          f"p95 {_ms(percentile(plain_times, 95))}, max {_ms(max(plain_times))}")
    print(f"mutated/unmutated ratio: median {statistics.median(ratios):.2f}x  p95 {percentile(ratios, 95):.2f}x  "
          f"max {max(ratios):.1f}x   (n={len(ratios)})")
    sizes = {sample.path: sample.size for sample in plain}
    by_kind: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for sample, ratio in zip(mutated, ratios, strict=True):
        assert sample.mutation is not None
        by_kind[sample.mutation.kind].append((ratio, sample.size / max(sizes[sample.path], 1)))
    print(f"  {'kind':<16} {'n':>5} {'median':>8} {'p95':>8} {'max':>9}   size ratio median / max")
    for kind in MUTATION_KINDS:
        values = [ratio for ratio, _size in by_kind.get(kind, [])]
        grown = [size for _ratio, size in by_kind.get(kind, [])]
        if values:
            print(f"  {kind:<16} {len(values):>5} {statistics.median(values):>7.2f}x {percentile(values, 95):>7.2f}x "
                  f"{max(values):>8.1f}x   {statistics.median(grown):.2f}x / {max(grown):.1f}x")
    worst = max(mutated, key=lambda sample: sample.seconds)
    print(f"slowest mutated email: {_ms(worst.seconds)} ({worst.size:,} bytes, unmutated "
          f"{_ms(base[worst.path])}): {worst.path.relative_to(CORPUS)} with {worst.mutation!r}")
    print("end states: " + ", ".join(f"{state} {count}" for state, count in
                                     sorted(Counter(sample.end_state for sample in mutated).items())))
    result("fuzz_ratio_median", round(statistics.median(ratios), 3), "x unmutated", n=len(ratios))
    result("fuzz_ratio_p95", round(percentile(ratios, 95), 3), "x unmutated", n=len(ratios),
           max=round(max(ratios), 1), slowest_ms=round(worst.seconds * 1000, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=0, help="a seeded sample of this many emails (0: all)")
    parser.add_argument("--mutations", type=int, default=21, help="single mutations per email (3 per kind)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    # The parser's truncation WARNINGs are still created and dispatched (part of the cost), just not printed.
    logging.getLogger().addHandler(logging.NullHandler())
    rng = random.Random(args.seed)
    paths = corpus_messages()
    if 0 < args.emails < len(paths):
        paths = sorted(rng.sample(paths, args.emails))
    plain, mutated = measure(paths, args.mutations, args.repeat, rng)
    report(plain, mutated, args)


if __name__ == "__main__":
    main()
