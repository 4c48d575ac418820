"""Online fine-tuning of a pre-trained agent in simulation, mixing offline and online data.

    python -m calql_robot.finetune task=pick_place checkpoint=RUN_DIR_OR_CHECKPOINT [finetune.env_steps=N]
                                    [finetune.mixing_ratio=0.5] [finetune.utd=1] [run_dir=DIR]

Re-running on an existing ``run_dir`` resumes with its counters, networks, optimizers and online data. Every option
and the checkpoint are checked before the run directory is created: a refused run leaves it unchanged.
"""

from __future__ import annotations

from omegaconf import DictConfig

from calql_robot.app import calql_app


@calql_app("finetune")
def main(cfg: DictConfig) -> None:
    from calql_robot.training.online import run_finetune

    run_finetune(cfg)


if __name__ == "__main__":
    main()
