"""User errors: what the CLI prints as one line on stderr with exit status 2, never a traceback.

`UserError` is a mixin: every user-facing error class derives from it *and* keeps its builtin base
(ValueError, OSError, RuntimeError), because callers catch by the builtin (checkpoint.LOAD_ERRORS
catches ValueError/OSError/RuntimeError) and the CLI catches the mixin. `OneLineError` also joins a
message's lines: keys, values, file contents and exception texts from user code may hold newlines.
"""

from __future__ import annotations


class UserError(Exception):
    """Mixin of every error whose message is meant for the user as is (the CLI: one line, exit 2)."""


class OneLineError(UserError, ValueError):
    """A user error whose message is one line: the CLI prints it as is. Keys, values, file contents
    and exception texts from user code are echoed back and may hold newlines; they are joined."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


class ConfigError(OneLineError):
    """A bad configuration; the message is one line that names the field and the problem."""


class DataError(OneLineError):
    """A bad prompt source; the message is one line naming the file, line and problem (field names and
    parser messages come from the user's file and may hold newlines)."""


class ModelError(UserError, ValueError):
    """A model or tokenizer that cannot be used; one line naming the path and the problem."""


class RunDirError(UserError, ValueError):
    """The output directory cannot hold this run."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (e.g. every update is non-finite); one line saying why and what to try."""


class CheckpointError(UserError, OSError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


class TrackingError(UserError, ValueError):
    """A tracking backend that was asked for cannot start (not installed, or its init failed)."""


class RewardError(OneLineError):
    """A reward that cannot be loaded or returned something unusable; one line (exception texts from
    user code, tracebacks of import errors and multi-line messages included)."""


class SuiteError(ConfigError):
    """A probe suite that cannot be loaded: names the suite and the problem (a user error: the CLI exits 2)."""


class SycophancyFileError(OneLineError):
    """A sycophancy prompt file whose pairs cannot be read."""


class ConstraintError(OneLineError):
    """A constraint the checker cannot read (unknown type, missing or wrong argument)."""


class DiscoveryError(DataError):
    """A path that holds no checkpoint policyshift can load; one line naming it and what was expected."""


class LogImportError(DataError):
    """A log that cannot be imported; one line naming the file and what was expected."""
