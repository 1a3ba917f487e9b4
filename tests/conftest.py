"""Shared fixtures. The servers live in harness/ (importable without pytest); their pytest fixtures live in
tests/fixtures/, one plugin module per server."""

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.dovecot",
    "tests.fixtures.receiver",
    "tests.fixtures.service",
    "tests.fixtures.miniflare",
    "tests.fixtures.pipeline",
]
