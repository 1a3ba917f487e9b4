"""Flask CLI commands: ``process-email`` (parse one saved email), ``replay-dead-letters``, ``replay-parked`` and
``check-config`` (validate a configuration file)."""

from __future__ import annotations

from flask import Flask


def register_cli(app: Flask) -> None:
    from background.replay import replay_dead_letters_command, replay_parked_command
    from config_cli import check_config_command
    from email_processing.cli import process_email_command

    app.cli.add_command(process_email_command)
    app.cli.add_command(replay_dead_letters_command)
    app.cli.add_command(replay_parked_command)
    app.cli.add_command(check_config_command)
