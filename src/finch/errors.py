"""Errors a user can fix; stages print their message (no traceback) and exit with status 2.

Kept free of heavy imports so every stage can catch them without loading torch.
"""


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file and key."""


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the fix."""


class ModelError(ValueError):
    """A model or weights file that does not fit; the message says which and why."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops rather than write garbage."""


USER_ERRORS = (ConfigError, DataError, ModelError, NonFiniteLossError, FileNotFoundError)
