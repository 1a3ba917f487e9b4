"""Shared fixtures. The servers live in harness/ (importable without pytest); their pytest fixtures live in
tests/fixtures/, one plugin module per server. tests/fixtures/tiers.py turns the folder into the tier marker."""

pytest_plugins = [
    "pytester",
    "tests.fixtures.tiers",
    "tests.fixtures.redis_server",
    "tests.fixtures.dovecot",
    "tests.fixtures.identity",
    "tests.fixtures.receiver",
    "tests.fixtures.service",
    "tests.fixtures.miniflare",
    "tests.fixtures.file_host",
    "tests.fixtures.pipeline",
    "tests.fixtures.state_store",
    "tests.fixtures.selenium_chromium",
]
