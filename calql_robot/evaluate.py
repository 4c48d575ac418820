"""Evaluation of a checkpoint: deterministic rollouts on fixed env seeds, success rate with a 95% Wilson interval.

    python -m calql_robot.evaluate checkpoint=RUN_DIR_OR_CHECKPOINT [task=NAME] [eval.episodes=50] [seed=S]
                                    [output=DIR] [eval.video_episodes=2]

A run directory is evaluated at its newest checkpoint. The agent and the task come from the checkpoint's saved
config; ``task=`` other than the checkpoint's task is refused. Episode ``i`` runs on env seed ``S + i`` (default
S = 10000, the seeds of training-time evaluation). Writes ``episodes.csv``, ``summary.json`` and ``videos/*.mp4``
under ``output`` (default ``runs/evaluate/<task>_<timestamp>``), never into the run directory it reads.
"""

from __future__ import annotations

from omegaconf import DictConfig

from calql_robot.app import calql_app


@calql_app("evaluate")
def main(cfg: DictConfig) -> None:
    from calql_robot.training.evaluation_run import run_evaluation

    run_evaluation(cfg)


if __name__ == "__main__":
    main()
