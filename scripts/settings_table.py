"""Print the README's configuration table from settings.SPECS (run: python scripts/settings_table.py)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from settings import SPECS  # noqa: E402


def default_text(spec) -> str:
    if spec.default_doc is not None:
        return spec.default_doc
    if spec.default is None:
        return "—"
    if isinstance(spec.default, bool):
        return "true" if spec.default else "false"
    if isinstance(spec.default, float) and spec.default.is_integer():
        return str(int(spec.default))
    return str(spec.default)


def main() -> None:
    print("| Variable | Default | Meaning |")
    print("|---|---|---|")
    for spec in SPECS:
        secret = " *Secret.*" if spec.secret else ""
        print(f"| `{spec.env}` | {default_text(spec)} | {spec.doc}{secret} |")


if __name__ == "__main__":
    main()
