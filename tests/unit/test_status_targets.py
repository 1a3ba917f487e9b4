"""``targets[]`` of the status document: each target's circuit, the worst any holder published."""

from __future__ import annotations

import time

import pytest

from config import TargetConfig
from routes.status_view import ClusterReads, build_status_document

TARGETS = (TargetConfig(id="make", url="https://make.test/h"), TargetConfig(id="archive", url="https://a.test/h"),
           TargetConfig(id="n8n", url="https://n8n.test/h"))


def document(reads: ClusterReads, targets: tuple = TARGETS) -> dict:
    return build_status_document(
        mode="enabled", lease_backend="redis", mailbox_folder="INBOX", version="v", instance={"host": "h", "pid": 1},
        local_lease=None, local_poller={"state": "standby"}, health=None, reads=reads, now=time.time(),
        mailbox_ids=("default", "studio", "clients"), targets=targets)


def circuits(**by_target: str) -> dict:
    return {"lease": {"state": "held"}, "poller": {"state": "polling"}, "circuits": by_target}


def test_each_target_reports_the_worst_circuit_of_the_first_mailbox_and_every_other_holder():
    # Given three holders: the first mailbox's and two others, each with its own process's breakers
    reads = ClusterReads(read=True, published=circuits(make="closed", archive="half_open"),
                         mailbox_statuses={"studio": circuits(make="open", archive="closed"),
                                           "clients": circuits(archive="closed")},
                         target_stats={})
    # Then make is open (one holder says so), archive half-open, and n8n, which nobody published, None
    assert {t["id"]: t["circuit"] for t in document(reads)["targets"]} == {
        "make": "open", "archive": "half_open", "n8n": None}


def test_a_circuit_published_only_by_another_mailboxs_holder_counts():
    reads = ClusterReads(read=True, published=None, mailbox_statuses={"studio": circuits(n8n="half_open")})
    assert [t["circuit"] for t in document(reads)["targets"]] == [None, None, "half_open"]


def test_every_holder_closed_is_closed():
    reads = ClusterReads(read=True, published=circuits(make="closed"), mailbox_statuses={"studio": circuits(
        make="closed")})
    assert document(reads)["targets"][0]["circuit"] == "closed"


@pytest.mark.parametrize("published, expected", [
    (None, None), ({"lease": {}}, None), (circuits(default="closed"), "closed"), (circuits(default="open"), "open"),
], ids=["no-holder", "holder-without-circuits", "closed", "open"])
def test_the_single_target_entry_without_a_configuration_carries_the_circuit(published, expected):
    reads = ClusterReads(read=True, published=published)
    [entry] = document(reads, targets=())["targets"]
    assert entry["id"] == "default" and entry["circuit"] == expected


def test_a_stale_answer_knows_no_circuit():
    [entry, *_] = document(ClusterReads(stale=True, read=True))["targets"]
    assert entry["circuit"] is None
