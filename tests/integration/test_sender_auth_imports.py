"""The Public Suffix List package is imported only when a mailbox authenticates its senders, at first use."""

from __future__ import annotations

import subprocess
import sys

from harness.service import ROOT, base_env

EMAIL = (b"Authentication-Results: mx.example.org; dkim=pass header.d=mail.trusted.example\r\n"
         b"From: boss@trusted.example\r\nSubject: files\r\n\r\nhttps://www.dropbox.com/scl/fi/aaaa/f.zip?rlkey=b&dl=0\r\n")
AUTH_ENV = {"SENDER_OF_INTEREST_FOR_POLLING": "@trusted.example", "SENDER_REQUIRE_AUTHENTICATED": "true",
            "SENDER_AUTHSERV_ID": "mx.example.org"}


def test_importing_the_app_and_every_module_does_not_import_publicsuffixlist():
    # A fresh interpreter, sender authentication configured: nothing may load the list before an email needs it.
    code = ("import sys, importlib, pkgutil\n"
            "import app, settings, config, cli\n"
            "for pkg in ('background', 'services', 'email_processing', 'routes'):\n"
            "    mod = importlib.import_module(pkg)\n"
            "    for info in pkgutil.iter_modules(mod.__path__):\n"
            "        importlib.import_module(f'{pkg}.{info.name}')\n"
            "assert 'publicsuffixlist' not in sys.modules, 'publicsuffixlist imported'\n"
            "from config import SenderAuth\n"
            "from email_processing.orchestrator import NullOffloader, process_email\n"
            "from email_processing.parsing import parse_message\n"
            f"parsed = parse_message({EMAIL!r})\n"
            "args = dict(received_at='2025-06-03T08:00:00Z', sender_allowlist=('@trusted.example',),\n"
            "            allow_without_links=False, offloader=NullOffloader())\n"
            "assert process_email(parsed, **args).decision == 'send'\n"
            "assert 'publicsuffixlist' not in sys.modules, 'imported without sender authentication'\n"
            "result = process_email(parsed, sender_auth=SenderAuth('mx.example.org'), **args)\n"
            "assert result.decision == 'send', result.reason\n"
            "assert 'publicsuffixlist' in sys.modules\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base_env(AUTH_ENV), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
