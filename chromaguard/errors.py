"""Errors a user can act on: each renders as one line."""

from __future__ import annotations


class ChromaguardError(Exception):
    """Base for errors that end a command with a one-line message."""

    exit_code = 1


class ConfigError(ChromaguardError):
    """A setting is invalid; the message names it, the bad value and a valid example."""

    exit_code = 2

    def __init__(self, setting: str, value: object, problem: str, example: str) -> None:
        self.setting = setting
        self.value = value
        shown = value if isinstance(value, str) else repr(value)
        super().__init__(f"{setting}={shown!r}: {problem}; for example {example}")


class StartupError(ChromaguardError):
    """The service could not start (engine failed, data dir locked, ...)."""

    exit_code = 2
