"""The Python API: load, run and export trained policies, build task envs, and train without the command line.

Everything here is also reachable as ``calql_robot.<name>`` (imported on first use). docs/python_api.md has a
runnable walk-through.

- :func:`load_policy` / :class:`Policy`: a run, checkpoint or export -> ``policy.act(obs)``
- :func:`export_policy`: weights-only ``policy.safetensors`` + ``policy.json``
- :func:`make_env`: a task's gymnasium env built as the apps build it (``with make_env(...) as env:``)
- :func:`pretrain`, :func:`finetune`, :func:`evaluate` -> :class:`RunResult`: the apps, from Python
"""

from calql_robot.api.envs import make_env
from calql_robot.api.export import export_policy
from calql_robot.api.loading import load_policy
from calql_robot.api.policy import Policy
from calql_robot.api.runs import RunResult, evaluate, finetune, pretrain

__all__ = ["Policy", "RunResult", "evaluate", "export_policy", "finetune", "load_policy", "make_env", "pretrain"]
