"""`python -m pixel_ddpg.train`: placeholder until the training loop lands (issue 5)."""

from omegaconf import DictConfig

from pixel_ddpg.config import cli


def run(cfg: DictConfig) -> None:
    from envs import EnvSettings

    settings = EnvSettings.from_config(cfg)
    print(f"config is valid for {settings.task_id} ({settings.obs_type}); training is not built yet")


main = cli(run)

if __name__ == "__main__":
    main()
