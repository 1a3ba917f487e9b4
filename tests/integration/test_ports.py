"""harness/ports.py's free_port under pytest-xdist: each worker's ports are its own, and a taken port is skipped.

The blocks are checked as computed (not by binding them: the other worker of this very run takes its ports there).
"""

from __future__ import annotations

import socket

import pytest

from harness import ports


def block_for(monkeypatch: pytest.MonkeyPatch, worker: str | None, count: int | None) -> range | None:
    for name, value in (("PYTEST_XDIST_WORKER", worker), ("PYTEST_XDIST_WORKER_COUNT", count)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(value))
    return ports._worker_block()


def ephemeral_range() -> range:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
        low, high = (int(value) for value in handle.read().split())
    return range(low, high + 1)


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_each_worker_has_a_block_of_its_own_outside_the_ephemeral_range(monkeypatch, count):
    blocks = [block_for(monkeypatch, f"gw{index}", count) for index in range(count)]
    taken: set[int] = set()
    for block in blocks:
        assert block is not None and len(block) >= 1000
        assert not taken & set(block), "two workers share ports"
        taken |= set(block)
        assert max(block) < min(ephemeral_range()), "a worker's ports overlap the kernel's bind(0)/connect ports"


def test_without_xdist_or_for_an_unknown_worker_the_kernel_picks(monkeypatch):
    assert block_for(monkeypatch, None, None) is None
    assert block_for(monkeypatch, "master", 2) is None
    assert block_for(monkeypatch, "gw2", 2) is None
    assert ports.free_port() in ephemeral_range()


def test_a_port_something_is_bound_to_is_skipped(monkeypatch):
    with socket.socket() as taken, socket.socket() as spare:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        spare.bind(("127.0.0.1", 0))
        taken_port, spare_port = taken.getsockname()[1], spare.getsockname()[1]
        spare.close()  # free again: the one to hand out
        monkeypatch.setattr(ports, "_worker_ports", lambda: iter([taken_port, spare_port]))
        assert ports.free_port() == spare_port
