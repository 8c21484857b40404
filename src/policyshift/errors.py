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
