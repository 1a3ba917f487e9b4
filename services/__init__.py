"""Adapters to external systems: state store, Redis client, IMAP, webhook, R2."""
