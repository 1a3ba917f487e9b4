"""``flask --app app replay-dead-letters [--id EVENT_ID | --all]``: move dead letters back to pending.

The command only changes the outbox (attempt count reset, same ``webhook-id``); the running lease holder's delivery
loop sends them, so the command can never race it. An unknown id exits 1.
"""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import with_appcontext


@click.command("replay-dead-letters")
@click.option("--id", "event_id", help="The event id (webhook-id) of one dead letter.")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@with_appcontext
def replay_dead_letters_command(event_id: str | None, replay_all: bool) -> None:
    """Move dead letters back to pending; the running service delivers them."""
    if bool(event_id) == bool(replay_all):
        click.echo("error: give exactly one of --id EVENT_ID or --all", err=True)
        sys.exit(2)
    from services.state_store import StateStoreError

    runtime = current_app.extensions["render_signal"]
    try:
        count = runtime.store.replay(event_id if event_id else None)
    except StateStoreError as exc:
        click.echo(f"error: state store unavailable ({exc})", err=True)
        sys.exit(1)
    if event_id and count == 0:
        click.echo(f"error: no dead letter with id {event_id}", err=True)
        sys.exit(1)
    click.echo(f"replayed {count} dead letter(s); the running service will deliver them")
