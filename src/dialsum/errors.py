"""User-facing errors: the CLI prints them on one line and exits non-zero, without a traceback."""


class DialsumError(Exception):
    """Base class for errors caused by user input or environment, not by a bug."""


class ConfigError(DialsumError):
    """A config file is missing, malformed or fails validation."""


class DataError(DialsumError):
    """A data file is missing, malformed or fails validation."""


class StorageError(DialsumError):
    """Object storage failed, refused a write, or returned content that fails verification."""


class FolderError(DialsumError):
    """A local folder the run needs cannot be created or written by this process's user."""


class PreflightError(ConfigError):
    """The settings cannot produce some references (too short a length limit, a blocking no-repeat rule)."""
