"""What every training app does first: pick the device, seed, find or create the dataset, build the agent."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from calql_robot.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} was asked for but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)


def set_threads(threads: int | str | None) -> None:
    """Set PyTorch's intra-op threads (None keeps its default, one per core; ``auto`` is decided, and every choice
    printed, by :func:`build_agent_for` once the observations are known: :mod:`calql_robot.training.threads`).

    Several runs sharing a machine should use 1 each: oversubscribed threads made an update 14x slower here.
    """
    if threads is not None and str(threads) != "auto":
        if int(threads) < 1:
            raise UserError(f"threads must be a positive number of CPU threads or null, got {threads}")
        torch.set_num_threads(int(threads))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_torch(cfg: DictConfig) -> torch.device:
    """Device (``cfg.device``), CPU threads (``cfg.threads``) and seeds (``cfg.seed``) of a run; returns the device."""
    device = resolve_device(cfg.device)
    set_threads(cfg.get("threads"))
    seed_everything(int(cfg.seed))
    return device


def agent_cfg_for_finetune(cfg: DictConfig, pre_state: dict[str, Any],
                           overrides: list[str] | None = None) -> DictConfig:
    """The pre-training run's agent config, with the command line's ``agent.KEY=VALUE`` overrides on top.

    ``agent=NAME`` on the command line picks a whole new agent config instead. Keys the checkpoint's config lacks
    (options added after it was written) take the composed config's values, so an older checkpoint gets today's
    defaults for them. ``overrides`` are the command line's ``key=value`` strings (default: hydra's).
    """
    from hydra.core.hydra_config import HydraConfig

    if overrides is None:
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    saved_cfg = pre_state.get("config")
    if "agent" in keys or not isinstance(saved_cfg, dict) or "agent" not in saved_cfg:
        return cfg
    if not isinstance(saved_cfg["agent"], dict):
        raise UserError(f"the checkpoint's saved config has agent={saved_cfg['agent']!r}; expected the agent options "
                        "as a mapping (state.json was edited or not written by pretrain/finetune): pass agent=NAME to "
                        "choose the agent explicitly")
    merged = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    saved = OmegaConf.create(saved_cfg["agent"])
    composed = merged.agent
    merged.agent = OmegaConf.merge(composed, saved)  # saved values win; keys it lacks keep the composed values
    for key in keys:
        if key.startswith("agent."):
            path = key[len("agent."):]
            value = OmegaConf.select(composed, path, default=None)
            OmegaConf.update(merged.agent, path, value, force_add=True)
    return merged


def load_start_checkpoint(cfg: DictConfig, run_dir: Path, source: Any) -> tuple[DictConfig, Path | None, Any, Any]:
    """Load the run's own newest checkpoint (resume) or else ``source`` (a run to start from); writes nothing.

    Returns (cfg with the checkpoint's agent unless the command line overrides it, the run's own checkpoint or None,
    tensors, state). A resumed checkpoint must hold the RNG and sampler states of a finetune/deploy run.
    """
    from calql_robot.training.checkpoint import check_state_keys, find_checkpoint, load_checkpoint

    own_ckpt = find_checkpoint(run_dir)
    tensors, state = load_checkpoint(own_ckpt or source)
    if own_ckpt is not None:
        check_state_keys(state, own_ckpt, ("step", "rng", "sampler_rng", "counters"), "resuming this run")
    cfg = agent_cfg_for_finetune(cfg, state)
    return cfg, own_ckpt, tensors, state


def check_checkpoint_task(cfg: DictConfig, state: dict[str, Any], source: Any) -> None:
    """Refuse a checkpoint whose saved config names another task than ``cfg.task.name`` (before anything is built)."""
    from calql_robot.training.checkpoint import find_checkpoint

    saved = state.get("config")
    saved_task = saved.get("task") if isinstance(saved, dict) else None
    trained_on = saved_task.get("name") if isinstance(saved_task, dict) else None
    given = OmegaConf.select(cfg, "task.name", default=None)
    if trained_on is not None and given is not None and str(trained_on) != str(given):
        folder = find_checkpoint(source) or source
        raise UserError(f"checkpoint {folder} was trained on task {trained_on}, not {given}; pass task={trained_on} "
                        f"to continue it, or checkpoint= a run of task {given}")


def run_dir_path(cfg: DictConfig) -> Path:
    """``cfg.run_dir`` as an absolute path; not created (see :func:`calql_robot.app.prepare_run_dir`)."""
    return Path(str(cfg.run_dir)).expanduser().resolve()


def dataset_location(value: Any) -> Path | str:
    """A dataset location as given: a URL (``s3://bucket/store.zarr``, any fsspec URL) stays a str, anything else
    is a local Path (``~`` expanded, a ``file://`` scheme dropped)."""
    from calql_robot.datasets.remote_store import is_url, local_path_text

    return str(value) if is_url(value) else Path(local_path_text(value)).expanduser()


def dataset_label(location: Path | str) -> str:
    """How a checkpoint records its dataset: the URL, or the absolute local path."""
    return location if isinstance(location, str) else str(location.resolve())


def storage_options(cfg: DictConfig) -> dict[str, Any]:
    """``data.storage_options``: the fsspec options for a dataset at a URL ({} when not set)."""
    opts = OmegaConf.select(cfg, "data.storage_options", default=None)
    return dict(OmegaConf.to_container(opts, resolve=True)) if isinstance(opts, DictConfig) else dict(opts or {})


def dataset_path(cfg: DictConfig) -> Path | str:
    """The offline dataset of a run: ``dataset=PATH`` if given, else the task's default ``task.dataset.path``;
    a URL is returned as a str (see :func:`dataset_location`)."""
    path = cfg.get("dataset") or OmegaConf.select(cfg, "task.dataset.path")
    if not path:
        raise UserError(f"task '{cfg.task.name}' names no default dataset; pass dataset=PATH to a zarr store")
    return dataset_location(path)


def ensure_dataset(cfg: DictConfig) -> Path | str:
    """Return the dataset path, creating the task's default dataset first when it is missing (never for a URL:
    a store at a URL is only read)."""
    from calql_robot.datasets import remote_store
    from calql_robot.envs import generate_task_dataset

    path = dataset_path(cfg)
    if isinstance(path, str):
        if not remote_store.exists(path, storage_options(cfg)):
            raise UserError(f"dataset '{path}' does not exist; expected a zarr store written by collect or convert "
                            "(and uploaded there)")
        return path
    if path.exists():
        return path
    if cfg.get("dataset"):
        raise UserError(f"dataset '{path}' does not exist; expected a zarr store written by collect or convert")
    minari_id = OmegaConf.select(cfg, "task.dataset.minari_id")
    if minari_id or "generate" not in cfg.task:
        hint = (f" Convert it first: python -m calql_robot.convert source=minari input={minari_id} output={path} "
                "download=true." if minari_id else "")
        demo = (f" For a small local demo dataset (not benchmark data): python -m calql_robot.collect "
                f"task={cfg.task.name} output={path}." if "generate" in cfg.task else "")
        raise UserError(f"the default dataset of task '{cfg.task.name}' is missing at '{path}'.{hint}{demo}")
    episodes = OmegaConf.select(cfg, "task.dataset.episodes")
    print(f"dataset {path} not found: creating the default dataset of task '{cfg.task.name}'"
          f"{f' ({episodes} episodes)' if episodes else ''}; later runs reuse it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return generate_task_dataset(cfg.task, path, episodes=episodes, seed=int(cfg.seed))


def agent_config(cfg: DictConfig) -> DictConfig:
    """The agent config with the discount taken from the task (gamma belongs to the task)."""
    agent_cfg = OmegaConf.create(OmegaConf.to_container(cfg.agent, resolve=True))
    agent_cfg.discount = float(cfg.task.gamma)
    return agent_cfg


def check_obs_spec(dataset_spec: dict[str, Any], env_spec: dict[str, Any], dataset: Path | str, task: str) -> None:
    """The dataset must hold the keys, shapes and dtypes the task's environment produces."""
    for key, spec in env_spec.items():
        have = dataset_spec.get(key)
        if have is None:
            raise UserError(f"dataset '{dataset}' has no observation key '{key}', which task '{task}' produces; "
                            f"it has {sorted(dataset_spec)}. Convert it with a key mapping to the task's keys.")
        if list(have["shape"]) != list(spec["shape"]) or str(have["dtype"]) != str(spec["dtype"]):
            raise UserError(f"dataset '{dataset}' key '{key}' is {have['dtype']}{list(have['shape'])} but task "
                            f"'{task}' produces {spec['dtype']}{list(spec['shape'])} (e.g. another image size)")


def evaluate_and_log(agent: Any, env: Any, cfg: DictConfig, run_dir: Path, step: int, logger: Any,
                     tag: str, action_scaling: Any = None) -> dict[str, Any]:
    """Evaluate the deterministic policy per ``cfg.eval``, log ``eval`` metrics, save ``videos/<tag>_<step>.mp4``.

    The same rollouts and metrics as the evaluation app (:func:`calql_robot.training.evaluate.evaluate_agent`):
    env seeds ``eval.seed`` (default 10000), ``eval.seed + 1``, ...; tasks scored by ``normalized_score`` (Kitchen)
    also log that score.
    """
    from calql_robot.training.evaluate import evaluate_agent, scalar_metrics

    video = run_dir / "videos" / f"{tag}_{step:09d}.mp4" if cfg.eval.get("video", True) else None  # pretrain_update_N
    result = evaluate_agent(agent, env, cfg.task, cfg.eval, video_path=video, action_scaling=action_scaling)
    logger.log("eval", step, scalar_metrics(result))
    if result.get("video") and hasattr(logger, "video"):
        logger.video("eval/video", step, result["video"])  # TensorBoard's Images tab, as add_video shows it
    return result


def checkpoint_tensors(agent: Any, prefix_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every agent tensor under ``agent/`` plus optional extra tensors."""
    tensors = {f"agent/{k}": v for k, v in agent.state_dict_tensors().items()}
    tensors.update(prefix_extra or {})
    return tensors


def agent_meta(agent: Any) -> dict[str, Any]:
    """Non-tensor agent state (JSON-able), if the agent has any."""
    return agent.state_dict_meta() if hasattr(agent, "state_dict_meta") else {}


def restore_agent(agent: Any, tensors: dict[str, Any], state: dict[str, Any]) -> None:
    """Load agent tensors (and meta) saved by :func:`checkpoint_tensors`."""
    from calql_robot.training.checkpoint import split_prefix

    agent.load_state_dict_tensors(split_prefix(tensors, "agent"))
    if hasattr(agent, "load_state_dict_meta") and "agent_meta" in state:
        agent.load_state_dict_meta(state["agent_meta"])


def fit_to_offline_data(agent: Any, dataset: Any, buffer: Any) -> None:
    """Set the statistics a new agent takes from the offline data, once, when pre-training starts.

    With ``agent.encoder.normalize`` the low-dim observation mean/std; with ``agent.critic_value_norm`` the critics'
    output transform from the MC returns. Both are module buffers: a resumed or fine-tuned run loads them from its
    checkpoint instead of refitting them.
    """
    from calql_robot.encoders.normalize import low_dim_statistics

    normalizer = getattr(agent.encoder, "normalizer", None)
    if normalizer is not None:
        stats = low_dim_statistics(dataset.arrays()["obs"], normalizer.keys, n_rows=int(dataset.n_transitions))
        normalizer.fit(stats)
        print("observation normalisation: " + "; ".join(
            f"{k} mean {np.round(m, 3).tolist()} std {np.round(sd, 3).tolist()}" for k, (m, sd) in stats.items()))
    if agent.cfg.critic_value_norm:
        shift, scale = agent.set_value_normalization(buffer.mc_returns)
        print(f"critic value normalisation: Q = {scale:.2f} * net + {shift:.2f} (std and mean of the MC returns)")
    if hasattr(agent, "reset_policy_ema"):
        agent.reset_policy_ema()  # the averaged policy starts with the fitted statistics


def build_agent_for(cfg: DictConfig, obs_spec: dict[str, Any], action_dim: int, device: torch.device,
                    build_agent: Any, batch_size: int | None = None, acting_only: bool = False) -> Any:
    """Set the CPU threads (``cfg.threads``, see :mod:`~calql_robot.training.threads`), then build ``cfg.agent``
    for the task's observation spec and action dimension."""
    from calql_robot.training.threads import apply_threads

    apply_threads(cfg.get("threads"), obs_spec, device, batch_size=batch_size, acting_only=acting_only)
    agent = build_agent(agent_config(cfg), obs_spec, action_dim, device)
    print(f"agent: {cfg.agent.variant} on {device}, observation keys {sorted(obs_spec)}, action dim {action_dim}")
    return agent
