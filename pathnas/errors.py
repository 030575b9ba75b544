"""The one base class of every error a user can fix: the CLIs print it as one line and exit 2.

Anything else that escapes is a bug and keeps its traceback. Domain errors (a bad
architecture code, a data set that does not read, a bundle that does not verify) derive
from ``UserError`` where they are defined; the generic kinds below cover files and settings.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user asked for or gave cannot be done; the message names the thing at fault."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A setting that does not validate; the message names the field and the allowed values."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that should exist does not (a user's input, or an earlier stage's output)."""


class InvalidFileError(UserError, ValueError):
    """A file that exists but cannot be used: unreadable, not the format expected, or inconsistent."""


class AlreadyExistsError(UserError, FileExistsError):
    """Writing would overwrite something that must not be overwritten."""


class MadeOtherwiseError(UserError):
    """Work in a run directory (a checkpoint, a search's evaluations) made with other inputs than this run's, so
    it cannot be resumed; ``changes`` names what changed. The pipeline moves such work aside and starts afresh."""

    def __init__(self, message: str, changes: list[str]):
        super().__init__(message)
        self.changes = changes


class RunLockedError(UserError):
    """Another process is writing the same run directory."""
