"""pixel_ddpg: DDPG from raw pixels on batched EnvPool MuJoCo envs.

``envs`` is imported first so the system EGL is loaded before anything imports envpool.

OpenMP's wait policy is set to passive before torch loads its OpenMP runtime (libgomp reads
it once, at load): by default idle OpenMP workers spin, and beside EnvPool's threads or any
other busy process on the same cores a 2-thread update then ran 10-20x slower than with one
thread (docs/benchmarks.md). A value the user exported is kept.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import envs  # noqa: E402,F401  (loads libEGL before envpool; see envs/egl.py)

__version__ = "0.1.0"
