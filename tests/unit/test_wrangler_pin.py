"""Supply chain (issue 16): every ``wrangler`` command the docs tell an operator to run names one exact version.

``npx wrangler …`` without a version runs whatever release is newest on the day. The Worker folder's lock file
does not hold wrangler (``npx`` fetches it), so the pin lives in the commands; should wrangler ever be locked in
``worker/package-lock.json``, the commands must name exactly that version.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from harness.service import ROOT

DOCS = ("README.md", "worker/README.md", "worker/wrangler.toml")
EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
# A wrangler invocation: "npx wrangler…" or a bare "wrangler <sub-command>" (not the file name wrangler.toml).
INVOCATION = re.compile(r"(?:\bnpx\s+(?:--yes\s+)?)?(?<![\w./-])wrangler(?P<version>@[^\s`]*)?(?=\s+[a-z])")


def read(path: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        return handle.read()


def invocations(path: str) -> list[tuple[str, str | None]]:
    return [(match.group(0), match.group("version")) for match in INVOCATION.finditer(read(path))]


def locked_wrangler() -> str | None:
    packages = json.loads(read("worker/package-lock.json"))["packages"]
    entry = packages.get("node_modules/wrangler")
    return entry["version"] if entry else None


def pinned_versions() -> set[str]:
    return {version.lstrip("@") for path in DOCS for _, version in invocations(path) if version}


@pytest.mark.parametrize("path", DOCS)
def test_every_wrangler_command_in_the_docs_names_an_exact_version(path):
    found = invocations(path)
    assert found, f"{path}: no wrangler command found (has the wording changed?)"
    for text, version in found:
        assert text.startswith("npx "), f"{path}: {text!r} is not run through npx"
        assert version and EXACT_VERSION.match(version.lstrip("@")), f"{path}: {text!r} has no exact version"


def test_the_docs_all_pin_the_same_wrangler_and_the_locked_one_if_any():
    versions = pinned_versions()
    assert len(versions) == 1, versions
    locked = locked_wrangler()
    if locked is not None:
        assert versions == {locked}, (versions, locked)


def test_the_invocation_pattern_tells_pinned_from_unpinned_commands():
    # The check above is only as good as its pattern: it must see both kinds, and skip the config file's name.
    text = "run `npx wrangler deploy`, `npx wrangler@4.60.0 tail`, `wrangler login`; edit `wrangler.toml` to"
    assert [(match.group(0), match.group("version")) for match in INVOCATION.finditer(text)] == [
        ("npx wrangler", None), ("npx wrangler@4.60.0", "@4.60.0"), ("wrangler", None)]
