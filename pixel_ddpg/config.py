"""Composing the Hydra config and running commands with one-line errors.

Every command (train, evaluate, benchmark, preview) goes through :func:`cli`, so a bad
group choice or value is one clear line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from pixel_ddpg.errors import USER_ERRORS, ConfigError, UserError

# conf/ lives at the top of the repo; `pip install .` and the wheel ship it as pixel_ddpg/conf
# (pyproject.toml maps the package `pixel_ddpg.conf` onto it).
PACKAGED_CONF_DIR = Path(__file__).resolve().parent / "conf"
SOURCE_CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # a clone, or `pip install -e .`
GROUPS = ("env", "obs", "agent", "launcher")



def _dmc(field: str, name: str) -> str | int:
    from envs.dmc import resolve

    return resolve(field, name)


def _gym_name(env_id: str) -> str:
    from envs.gym_registry import slug

    return slug(env_id)


def _register_resolvers() -> None:
    """``${div:a,b}``: conf/launcher/local.yaml splits the replay's memory share between the jobs
    that run at once; ``${dmc:field,task}``: conf/env/dmc.yaml reads a dm_control task's EnvPool id,
    domain and time limit (:mod:`envs.dmc`); ``${gym_name:id}``: conf/env/gym.yaml's run-dir-safe
    name of a Gymnasium id (:mod:`envs.gym_registry`). Registered on import, so every process that composes
    or resolves has them (a joblib or submitit worker imports this module to run the job)."""
    if not OmegaConf.has_resolver("div"):
        OmegaConf.register_new_resolver("div", lambda a, b: float(a) / float(b))
    if not OmegaConf.has_resolver("dmc"):
        OmegaConf.register_new_resolver("dmc", _dmc)
    if not OmegaConf.has_resolver("gym_name"):
        OmegaConf.register_new_resolver("gym_name", _gym_name)


_register_resolvers()


def ensure_writable_dir(folder: Path, setting: str) -> Path:
    """Create ``folder`` and prove it takes a file, before any work is done; ``setting`` names
    the override that chose it, for the one-line error."""
    probe = folder / ".write-test"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{setting}={folder} is not writable ({exc.strerror}); choose a writable folder") from None
    return folder


def conf_dir() -> Path:
    """The Hydra config folder: the installed package's copy first, then the source tree's."""
    for folder in (PACKAGED_CONF_DIR, SOURCE_CONF_DIR):
        if (folder / "config.yaml").is_file():
            return folder
    raise UserError(f"config folder missing: neither {PACKAGED_CONF_DIR} nor {SOURCE_CONF_DIR} holds config.yaml; "
                    "reinstall pixel_ddpg (`pip install .` or `pip install -e .` from its clone)")


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def check_group_overrides(overrides: Sequence[str]) -> None:
    """Name a bad ``env=``/``obs=``/``agent=`` choice, or an env choice that lacks its task
    (:func:`envs.settings.check_env_choice`), in one line, before Hydra composes (Hydra would
    resolve the run dir's name first, with a traceback)."""
    from envs.settings import check_env_choice

    envs_chosen: list[str] = []
    tasks: list[str] = []
    gym_id = False
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.lstrip("+~")
        if sep and key in GROUPS:
            for choice in value.split(","):  # multirun lists
                if choice not in group_choices(key):
                    raise ConfigError(f"{key}={choice!r} is not known; choose one of {group_choices(key)}")
            if key == "env":
                envs_chosen = value.split(",")
        elif sep and key == "env.task":
            tasks = value.split(",")
        elif sep and key == "env.id":
            gym_id = True
    check_env_choice(envs_chosen, tasks, gym_id)


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The composed config, for code and tests that do not go through the command line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    check_group_overrides(overrides)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


class ArgParser(argparse.ArgumentParser):
    """argparse for the commands that take paths, not a config to compose (plot, report): usage
    mistakes are one ``error:`` line and exit code 2, like the Hydra commands' (:func:`cli`)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see --help)")


def cli(task: Callable[[DictConfig], object], config_name: str = "config",
        argv_hook: Callable[[list[str]], list[str]] | None = None) -> Callable[[], None]:
    """Wrap ``task(cfg)`` as a Hydra command with one-line errors for user mistakes.

    ``argv_hook`` may rewrite the command-line overrides before Hydra sees them.
    """
    import hydra

    def guarded(cfg: DictConfig) -> None:
        try:
            task(cfg)
        except USER_ERRORS as exc:
            fail(str(exc))
        except MissingMandatoryValue as exc:  # a `???` in conf/ the command line did not fill
            fail(f"{exc.full_key}= is required: give it on the command line ({exc.full_key}=...)")
        except InterpolationResolutionError as exc:  # a resolver's own one-line error, unwrapped
            if isinstance(exc.__cause__, USER_ERRORS):
                fail(str(exc.__cause__))
            raise

    def main() -> None:
        try:
            check_group_overrides([a for a in sys.argv[1:] if not a.startswith("-")])
            if argv_hook is not None:
                sys.argv[1:] = argv_hook(sys.argv[1:])
        except USER_ERRORS as exc:
            fail(str(exc))
        hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(guarded)()

    return main


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
