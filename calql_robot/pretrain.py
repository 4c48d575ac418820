"""Offline pre-training from a zarr dataset.

    python -m calql_robot.pretrain task=pick_place [agent=calql|cql|sac] [dataset=STORE] [pretrain.steps=N]
                                    [run_dir=DIR] [device=auto|cpu|cuda]

Re-running on an existing ``run_dir`` resumes from its newest checkpoint. ``--help`` lists every option. Every option
is checked before the run directory is created: a refused run leaves an existing run directory unchanged.
"""

from __future__ import annotations

from omegaconf import DictConfig

from calql_robot.app import calql_app


@calql_app("pretrain")
def main(cfg: DictConfig) -> None:
    from calql_robot.training.offline import run_pretrain

    run_pretrain(cfg)


if __name__ == "__main__":
    main()
