"""worker/src/providers.generated.json is the registry as ``make providers-json`` writes it, and what it gives the
Worker for the providers it copies today is what the service's R2 offload allows and keys on."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.providers_json import OUTPUT, render
from services.r2_offload import KEY_FORM_PARAMS, OFFLOADED_PROVIDERS

COMMITTED = Path(__file__).resolve().parents[2] / "worker" / "src" / "providers.generated.json"


def worker_allow_list(document: dict) -> dict[str, list[str]]:
    """What worker/src/policy.js builds: the download hosts of the copyable providers that name some."""
    return {p["name"]: p["download_hosts"] for p in document["providers"] if p["copyable"] and p["download_hosts"]}


def test_the_committed_file_is_what_make_providers_json_writes():
    assert OUTPUT == COMMITTED
    # Regenerated in memory: any difference (a provider, a host, a flag, the formatting) fails; run make providers-json.
    assert COMMITTED.read_text(encoding="utf-8") == render()


def test_every_provider_of_the_payload_is_in_the_file_with_its_copy_rules():
    document = json.loads(COMMITTED.read_text(encoding="utf-8"))
    by_name = {p["name"]: p for p in document["providers"]}
    assert list(by_name) == ["dropbox", "fromsmash", "swisstransfer", "wetransfer", "gdrive", "onedrive", "sharepoint",
                             "box", "pcloud", "mega"]
    assert by_name["mega"]["copyable"] is False and by_name["mega"]["download_hosts"] == []
    assert by_name["mega"]["fragment_identifies"] is True
    assert "drive.usercontent.google.com" in by_name["gdrive"]["download_hosts"]


def test_the_worker_copies_dropbox_from_the_hosts_and_with_the_key_rules_the_service_uses():
    document = json.loads(COMMITTED.read_text(encoding="utf-8"))
    allow_list = worker_allow_list(document)
    dropbox = next(p for p in document["providers"] if p["name"] == "dropbox")
    assert allow_list["dropbox"] == list(OFFLOADED_PROVIDERS["dropbox"])
    assert set(dropbox["key_params"]) == KEY_FORM_PARAMS["dropbox"]
    # the transfer services' files come from resolution: Smash's regional API and files are on fromsmash.co,
    # SwissTransfer's on dl-<n>.swisstransfer.com, WeTransfer's direct links on download.wetransfer.com (their
    # landing pages, like all of Smash's links, are never copied)
    assert allow_list.get("fromsmash") == ["fromsmash.co"]
    assert allow_list.get("swisstransfer") == ["swisstransfer.com"]
    assert allow_list.get("wetransfer") == ["download.wetransfer.com"]
    assert "mega" not in allow_list
