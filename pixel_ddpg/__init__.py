"""pixel_ddpg: DDPG from raw pixels on batched EnvPool MuJoCo envs.

``envs`` is imported first so the system EGL is loaded before anything imports envpool.
"""

import envs  # noqa: F401  (loads libEGL before envpool; see envs/egl.py)

__version__ = "0.1.0"
