"""docs/configuration.md, rendered from ``config.OPTIONS`` so the page cannot drift from the code.

Regenerate with ``python -m chromaguard.config.docs > docs/configuration.md``; tests/unit/test_docs.py
fails when the committed page differs.
"""

from __future__ import annotations

import sys

from .settings import CONFIG_ENV, OPTIONS, Option

REGENERATE = "python -m chromaguard.config.docs > docs/configuration.md"

_BEFORE = f"""\
# Configuration reference

Generated from `OPTIONS` in `chromaguard/config/settings.py` by `{REGENERATE}`; do not edit by hand.

Precedence: command-line flags > environment > config file (`--config FILE` or
`{CONFIG_ENV}`, YAML) > defaults. Where several environment names mean the same setting, the
first listed wins and `chromaguard config` warns about the conflict. The config file takes the keys
listed (Chroma's own YAML keys such as `listen_address`, `persist_path` and
`open_telemetry.endpoint` work too).

Every value is checked before anything starts. A bad one ends the command with exit code 2 and one
line that names the setting, the bad value and a valid example:

```
chromaguard: error: CHROMA_SERVER_HTTP_PORT='99999': port out of range 1-65535; for example CHROMA_SERVER_HTTP_PORT=8000
```
"""

_AFTER = """\
Durations take Docker's spelling: `30`, `30s`, `500ms`, `2m`.

`chromaguard config` prints the effective configuration, where each value came from, warnings
(conflicting names, credentials set while auth is off) and notes (a legacy name the bare engine
would have ignored); secrets are shown as `***`; `--json` for scripts.
"""


def _code(names: tuple[str, ...]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def _cell(text: str) -> str:
    return " " + text.replace("|", "\\|") + " " if text else " "


def _row(*cells: str) -> str:
    return "|" + "|".join(map(_cell, cells)) + "|"


def _option_row(option: Option) -> str:
    meaning = option.help + ("; redacted everywhere" if option.secret else "")
    return _row(_code(option.env), f"`{option.flag}`" if option.flag else "", _code(option.keys),
                option.shown_default, meaning)


def configuration_markdown() -> str:
    """The whole page: fixed prose around a table with one row per option."""
    lines = [_BEFORE, "| environment | flag | config key | default | meaning |", "|---|---|---|---|---|"]
    lines += [_option_row(option) for option in OPTIONS]
    lines.append(_row(f"`{CONFIG_ENV}`", "`--config`", "", "none", "the YAML config file"))  # not an Option
    lines += ["", _AFTER]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(configuration_markdown())
