"""The tier rules hold: a unit test can open no socket and start no process, a test file outside the tier folders
is a collection error, and every tier may connect to loopback only."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pytest_socket import SocketConnectBlockedError

UNIT_CONFTEST = Path(__file__).resolve().parents[1] / "unit" / "conftest.py"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A tests/ tree with this repository's tier plugin and the real tests/unit/conftest.py."""
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider --allow-hosts=127.0.0.1,::1\n")
    pytester.makeconftest('pytest_plugins = ["tests.fixtures.tiers"]\n')
    (pytester.path / "tests" / "unit").mkdir(parents=True)
    (pytester.path / "tests" / "unit" / "conftest.py").write_text(UNIT_CONFTEST.read_text())
    return pytester


def test_a_unit_test_that_opens_a_socket_or_starts_a_process_fails(project: pytest.Pytester) -> None:
    (project.path / "tests" / "unit" / "test_forbidden.py").write_text(
        "import os, socket, subprocess, sys, multiprocessing\n"
        "def test_tcp():\n    socket.socket().close()\n"
        "def test_unix():\n    socket.socket(socket.AF_UNIX).close()\n"
        "def test_subprocess():\n    subprocess.run([sys.executable, '-c', 'pass'])\n"
        "def test_fork():\n    os.fork()\n"
        "def test_system():\n    os.system('true')\n"
        "def test_multiprocessing():\n"
        "    proc = multiprocessing.get_context('spawn').Process(target=print)\n    proc.start()\n"
        "def test_pure():\n    assert sum([1, 2]) == 3\n")
    result = project.runpytest_inprocess("-m", "unit", "-W", "ignore::UserWarning")
    result.assert_outcomes(passed=1, failed=6)
    result.stdout.fnmatch_lines(["*SocketBlockedError*", "*ProcessInUnitTest*"])


def test_a_test_file_outside_the_tier_folders_is_a_collection_error(project: pytest.Pytester) -> None:
    (project.path / "tests" / "test_stray.py").write_text("def test_anything():\n    pass\n")
    result = project.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*tests/test_stray.py: a test file belongs in tests/unit, tests/integration or*"])


def test_the_tier_marker_comes_from_the_folder(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("integration") is not None
    assert request.node.get_closest_marker("unit") is None


def test_an_integration_test_cannot_connect_outside_loopback() -> None:
    # 192.0.2.1 is TEST-NET-1: pytest-socket refuses it before any packet leaves.
    # pytest-socket also warns, which filterwarnings=error would turn into the failure: both are checked here.
    with pytest.raises(SocketConnectBlockedError), pytest.warns(UserWarning, match='host "192.0.2.1"'):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
