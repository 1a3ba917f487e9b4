"""The unit tier: pure logic. Every test here runs with sockets (Unix ones included) and process creation refused."""

from typing import Iterator

import pytest
import pytest_socket

from tests.fixtures.tiers import refuse_sockets_and_processes


@pytest.fixture(autouse=True)
def _no_socket_no_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    refuse_sockets_and_processes(monkeypatch)
    yield
    pytest_socket.enable_socket()
