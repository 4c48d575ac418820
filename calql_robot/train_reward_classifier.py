"""Train a binary success classifier on a store's camera frames, for a learned reward (as HIL-SERL does).

    python -m calql_robot.train_reward_classifier dataset=STORE [cameras=[KEY,...]] [output=DIR] [steps=N]

Successful episodes' final frames are positive, the rest negative (rules: calql_robot/training/reward_data.py);
held-out episodes give precision, recall and a calibration curve. ``output`` receives ``classifier.safetensors`` +
``classifier.json`` (load them with ``calql_robot.deployment.reward_classifier.load_reward_classifier``),
``metrics.json``, ``calibration.csv`` / ``calibration.png`` and ``train.csv``. ``--help`` lists every option.
"""

from __future__ import annotations

from omegaconf import DictConfig

from calql_robot.app import calql_app


@calql_app("train_reward_classifier")
def main(cfg: DictConfig) -> None:
    from calql_robot.training.reward_classifier import run_train_reward_classifier

    run_train_reward_classifier(cfg)


if __name__ == "__main__":
    main()
