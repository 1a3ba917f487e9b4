"""Shared fixtures. The real-service fixtures live in tests/infra/, one module per server, loaded as plugins."""

pytest_plugins = [
    "tests.infra.redis_server",
    "tests.infra.dovecot",
    "tests.infra.receiver",
    "tests.infra.service",
    "tests.infra.miniflare",
    "tests.support.pipeline",
]
