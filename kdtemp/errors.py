"""The project's own exceptions.

Each carries a one-line message that names the problem and the fix; the CLI prints it in red and
exits non-zero, so no traceback ever reaches a user for input we can foresee.
"""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line (and `limit` characters), or its type when it has none:
    what a one-line refusal quotes of a library's error."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class KDTempError(Exception):
    """Base of every error a user can act on."""


class ConfigError(KDTempError):
    """A config file, a key in it, or a command-line override is wrong."""


class DataError(KDTempError):
    """A dataset cannot be found, read or understood."""


class CheckpointError(KDTempError):
    """A checkpoint is missing, unsafe, or belongs to another experiment."""


class RunsError(KDTempError):
    """The runs directory cannot be used: unwritable, empty, or holding files we cannot trust."""
