"""calql_robot: Cal-QL offline pre-training and online fine-tuning for robot manipulation.

The Python API (docs/python_api.md) is imported on first use, so ``import calql_robot`` stays light:
``calql_robot.load_policy``, ``export_policy``, ``make_env``, ``pretrain``, ``finetune``, ``evaluate``, ``Policy``,
``RunResult`` (also importable from :mod:`calql_robot.api`). The apps ``python -m calql_robot.pretrain`` etc. are
unaffected; in a process that has imported an app module itself (``import calql_robot.pretrain``) that name is the
module, so use ``from calql_robot.api import pretrain`` there.
"""

from typing import Any

__version__ = "0.1.0"

_API_NAMES = ("Policy", "RunResult", "evaluate", "export_policy", "finetune", "load_policy", "make_env", "pretrain")


def __getattr__(name: str) -> Any:
    """Lazy access to the Python API (:mod:`calql_robot.api` is imported on the first use of one of its names)."""
    if name in _API_NAMES:
        from calql_robot import api

        return getattr(api, name)
    raise AttributeError(f"module 'calql_robot' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API_NAMES])


def _load_triton_before_mesa() -> None:
    """Load Triton's LLVM before any MuJoCo rendering context exists.

    PyTorch imports Triton lazily (the first optimizer triggers it). When Mesa's software renderer (llvmpipe, used
    by headless EGL/OSMesa rendering) has already loaded its own LLVM, loading libtriton afterwards crashes the
    process with a segmentation fault (reproduced 4 out of 4 times here); loaded first, both coexist.
    """
    try:
        import triton._C.libtriton  # noqa: F401
    except ImportError:
        pass


_load_triton_before_mesa()
