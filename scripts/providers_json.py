"""Writes worker/src/providers.generated.json, the Worker's copy of the provider registry (email_processing/providers/):
per provider its name, link domains, download hosts, whether R2 may copy it, and the canonical-key rules (the query
parameters the key form keeps; whether the fragment is part of a link). The Worker's allow-list is the download hosts
of the copyable providers that name some. Run ``make providers-json`` (``python -m scripts.providers_json``); the file
is committed, and tests/unit/test_providers_json.py fails when it differs from what this writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from email_processing.providers import PROVIDERS

OUTPUT = Path(__file__).resolve().parents[1] / "worker" / "src" / "providers.generated.json"
COMMENT = "Generated from email_processing/providers/ by `make providers-json`; do not edit by hand."


def providers_document() -> dict:
    """The registry as the Worker reads it, in registry order."""
    return {
        "$comment": COMMENT,
        "providers": [
            {
                "name": provider.name,
                "domains": list(provider.domains),
                "download_hosts": list(provider.download_hosts),
                "copyable": provider.copyable,
                "key_params": sorted(provider.key_params) if provider.key_params is not None else None,
                "fragment_identifies": provider.fragment_identifies,
            }
            for provider in PROVIDERS
        ],
    }


def render() -> str:
    return json.dumps(providers_document(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUTPUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(OUTPUT.parents[2])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
