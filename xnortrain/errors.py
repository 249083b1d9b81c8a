"""The exceptions xnortrain raises for user mistakes.

A `UserError` carries one line that names the bad key, value or file and says what would
be valid; the command line prints exactly that line and exits non-zero, no traceback.
"""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type's name where the message is empty."""
    message = str(err).strip()
    return message.splitlines()[0] if message else type(err).__name__


class UserError(Exception):
    """A mistake in the user's config, data, command line or checkpoint."""


class ConfigError(UserError, ValueError):
    """An unknown key, a value of the wrong type, or a choice that does not exist."""


class DataError(UserError, FileNotFoundError):
    """A data set that is missing or not in the expected layout."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is damaged, foreign, or does not fit the model."""


class MissingDependency(UserError, ImportError):
    """An optional package that the requested feature needs is not installed."""


class TrainingError(UserError):
    """The run cannot go on (a non-finite loss); the checkpoints on disk are the last good state."""
