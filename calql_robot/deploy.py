"""Online fine-tuning on a robot (simulated or real) behind the RobotInterface, safe by default.

    python -m calql_robot.deploy robot=sim task=pick_place checkpoint=RUN_DIR [deploy.episodes=N] [run_dir=DIR]

Acting runs at the robot's control rate while a learner thread trains beside it; every finished episode is stored
in ``run_dir/online.zarr`` at once. Re-running on the same ``run_dir`` resumes (counters, networks, optimizers,
replay and online store). See docs/robot_bringup.md for bringing up a lab robot.
"""

from __future__ import annotations

from omegaconf import DictConfig

from calql_robot.app import calql_app


@calql_app("deploy")
def main(cfg: DictConfig) -> None:
    from calql_robot.deployment.loop import run_deploy
    from calql_robot.training.session import run_dir_path

    run_deploy(cfg, run_dir_path(cfg))  # the run directory is created once the checkpoint and robot are checked


if __name__ == "__main__":
    main()
