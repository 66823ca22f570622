"""The errors that mean bad input: the user can fix them, and every command prints their message in one
``error:`` line (exit code 2) instead of a traceback. The bottom layer: imports nothing of the project."""

__all__ = ["ConfigError", "DatasetError", "CheckpointError", "INPUT_ERRORS"]


class ConfigError(ValueError):
    """A configuration problem the user can fix (bad key, value, type or file)."""


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or misconfigured; the message says what to do."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model; the message says which and what to do."""


INPUT_ERRORS = (ConfigError, DatasetError, CheckpointError)
