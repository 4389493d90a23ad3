"""The errors pixel_ddpg raises for a problem the user can fix, and the set its commands print
as one line (``error: ...``, exit code 2) instead of a traceback.

envs/ keeps its own (:class:`envs.errors.EnvError`): each package raises the errors of its own
home, and the commands, which sit above both, catch both.
"""

from __future__ import annotations

from envs.errors import EnvError


class UserError(RuntimeError):
    """A problem the user can fix (bad path, bad checkpoint, no GPU...): printed as one line."""


class ConfigError(ValueError):
    """A learner, replay or device setting is invalid; the message names the value and the valid choices."""


# Errors shown as one line; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ConfigError, EnvError)
