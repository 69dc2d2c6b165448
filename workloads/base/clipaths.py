"""Paths named on the command line, checked before anything is created or started.

A run that would fail at its end (a summary into a file that is a folder) or half-way (a run
directory under a file) is refused here with the option's name, so the user sees what to change
instead of an ``OSError`` from deep inside; nothing here creates anything, so a dry run can use it.
"""

from __future__ import annotations

from pathlib import Path

from workloads.base.errors import ConfigError


def _blocker(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is not a folder (nothing can be created under it)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def out_dir(text: str, option: str) -> Path:
    """A folder to write into: an existing folder, or one that can be created. A path this user
    may not even look at is left to the command (not root: the lab says so first)."""
    path = Path(text)
    try:
        if path.exists() and not path.is_dir():
            raise ConfigError(option, text, "is a file; give a folder (existing or to be created)")
        block = _blocker(path)
    except PermissionError:
        return path
    if block is not None:
        raise ConfigError(option, text, f"cannot be created: {block} is a file")
    return path


def out_file(text: str, option: str) -> Path:
    """A file to write: not a folder, and its folder existing or creatable."""
    path = Path(text)
    if path.is_dir():
        raise ConfigError(option, text, "is a folder; give a file name")
    if (block := _blocker(path)) is not None:
        raise ConfigError(option, text, f"cannot be created: {block} is a file")
    return path


def in_file(text: str, option: str) -> Path:
    """A file to read: it exists and is a file."""
    path = Path(text)
    if not path.exists():
        raise ConfigError(option, text, "no such file")
    if path.is_dir():
        raise ConfigError(option, text, "is a folder; give a file")
    return path


def in_dir(text: str, option: str) -> Path:
    """A folder to read: it exists and is a folder."""
    path = Path(text)
    if not path.exists():
        raise ConfigError(option, text, "no such folder")
    if not path.is_dir():
        raise ConfigError(option, text, "is a file; give a folder")
    return path


def read_text(text: str, option: str) -> str:
    """A text file's content, checked as ``in_file``; one that is not UTF-8 is bad input, not a crash."""
    path = in_file(text, option)
    try:
        return path.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(option, text, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
