"""Flask CLI commands: ``process-email`` (parse one saved email), ``replay-dead-letters``, ``replay-parked``,
``check-config`` (validate a configuration file) and ``oauth-login`` (sign a delegated mailbox in)."""

from __future__ import annotations

from flask import Flask


def register_cli(app: Flask) -> None:
    from background.replay import replay_dead_letters_command, replay_parked_command
    from config_cli import check_config_command
    from email_processing.cli import process_email_command
    from services.oauth.cli import oauth_login_command

    app.cli.add_command(process_email_command)
    app.cli.add_command(replay_dead_letters_command)
    app.cli.add_command(replay_parked_command)
    app.cli.add_command(check_config_command)
    app.cli.add_command(oauth_login_command)
