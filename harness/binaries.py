"""Finding the server binaries the real-service fixtures need.

Locally a missing binary skips the test with a reason; under ``CI=true`` it fails instead, so a CI machine
that lacks a package can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest

SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_binary(name: str, package: str) -> str:
    """Return the path of ``name`` or skip (fail under CI) naming the package that provides it."""
    path = shutil.which(name, path=SEARCH_PATH)
    if path:
        return path
    message = f"{name} not found: install the Debian package {package} (make test does)"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
