"""The errors every layer may raise, in a leaf module so the describing modules (schema, config,
scenario, plan) can all raise them without importing each other."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message names key, value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(self.message())

    def message(self) -> str:
        return f"config {self.key}={self.value!r} is invalid: {self.allowed}"


class UnknownKeyError(ConfigError):
    """A key the schema does not know: a misspelling would otherwise silently run the default."""

    def message(self) -> str:
        shown = "" if self.value is None or isinstance(self.value, (dict, list)) else f"={self.value!r}"
        return f"config {self.key}{shown} is not a known setting: {self.allowed}"


class LabError(RuntimeError):
    """Something the lab needs is missing or failed; the message says what to do."""


class RunFailed(LabError):
    """A run that had started failed (its run directory says how far it got): exit status 1, where
    a ``LabError`` before anything started is a missing precondition (3)."""
