"""Finding the server binaries the loopback harness needs.

``find_binary`` raises ``MissingRuntime`` naming the Debian package; the pytest side (tests/fixtures/runtime.py)
turns that into a skip locally and a failure under ``CI=true``, so a CI machine that lacks a package can never pass
by skipping, while the demo, the chaos run and the benchmarks print the message and exit.
"""

from __future__ import annotations

import os
import shutil

SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


class MissingRuntime(RuntimeError):
    """A server binary or the Worker's npm packages are missing."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def find_binary(name: str, package: str) -> str:
    """Return the path of ``name`` or raise ``MissingRuntime`` naming the package that provides it."""
    path = shutil.which(name, path=SEARCH_PATH)
    if path:
        return path
    raise MissingRuntime(f"{name} not found: install the Debian package {package} (make test does)")
