"""The locks: every pin of requirements*.txt is in its lock, with hashes, and the two locks agree."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\[\]-]+)==([^\s\\;]+)", re.M)


def _name(raw: str) -> str:
    return re.sub(r"\[.*\]", "", raw).lower().replace("_", "-").replace(".", "-")


def pins(path: Path) -> dict[str, str]:
    return {_name(name): version for name, version in PIN.findall(path.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("source, lock", [("requirements.txt", "requirements.lock"),
                                          ("requirements-dev.txt", "requirements-dev.lock")])
def test_every_pin_of_a_requirements_file_is_in_its_lock_at_the_same_version(source, lock):
    wanted, locked = pins(ROOT / source), pins(ROOT / lock)
    assert wanted, source
    stale = {name: (version, locked.get(name)) for name, version in wanted.items() if locked.get(name) != version}
    assert not stale, f"{lock} is stale (run `make lock`): {stale}"


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_every_locked_package_carries_a_hash_so_installs_can_require_them(lock):
    entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / lock).read_text(encoding="utf-8"))
    packages = [entry for entry in entries if PIN.match(entry)]
    assert packages and all("--hash=sha256:" in entry for entry in packages)


def test_the_dev_lock_installs_the_same_runtime_versions_as_the_runtime_lock():
    runtime, dev = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime
