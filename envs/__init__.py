"""EnvPool MuJoCo (dm_control) envs as the rest of pixel_ddpg sees them.

Importing this package loads the system EGL first, so envpool can render headless.
"""

import logging

from envs.egl import preload_egl

preload_egl()
# PyOpenGL (pulled in by EnvPool's render helpers) logs an INFO line on import; not news.
logging.getLogger("OpenGL").setLevel(logging.WARNING)

from envs.errors import ConfigError, EGLUnavailable, EnvError  # noqa: E402
from envs.make import make_env  # noqa: E402
from envs.pool import EnvSpec, EnvStep, VecEnv  # noqa: E402
from envs.settings import EnvSettings  # noqa: E402

__all__ = ["ConfigError", "EGLUnavailable", "EnvError", "EnvSettings", "EnvSpec", "EnvStep", "VecEnv", "make_env"]
