"""Errors a user can cause. The CLI prints their message as one sentence and exits with code 2."""


class DigitlabError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""


class DatasetError(DigitlabError):
    """A dataset is missing, corrupt or unknown."""


class ConfigError(DigitlabError):
    """An option or configuration value is invalid."""


class ImageError(DigitlabError):
    """An image file cannot be used (unreadable, too large, blank)."""


class RunError(DigitlabError):
    """A run folder is missing, incomplete or from an incompatible version."""


class TrainingError(DigitlabError):
    """Training could not go on (for example the loss became NaN)."""
