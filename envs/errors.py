"""Errors raised early, before any env or file is created, so callers can print one line."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the value and the valid choices."""


class EGLUnavailable(RuntimeError):
    """The system EGL library cannot be loaded, so MuJoCo cannot render pixels."""
