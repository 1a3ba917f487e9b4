"""Print the README's configuration table from settings.SPECS (run: python -m scripts.settings_table)."""

from settings import SPECS


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
