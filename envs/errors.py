"""The errors envs raises for a problem the user can fix, all under :class:`EnvError`: the one
type a caller above envs (pixel_ddpg's commands) catches to print one line, with no import
from above."""


class EnvError(Exception):
    """A problem with the env setup that the user can fix; the message says what and how."""


class ConfigError(EnvError, ValueError):
    """An env setting is invalid; the message names the value and the valid choices."""


class EGLUnavailable(EnvError, RuntimeError):
    """The system EGL library cannot be loaded, so MuJoCo cannot render pixels."""
