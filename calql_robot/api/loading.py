"""``load_policy(path)``: a :class:`~calql_robot.api.policy.Policy` from a run, a checkpoint or an export.

A training checkpoint's ``tensors.safetensors`` holds every agent tensor under ``agent/`` (networks, target critics,
optimizer moments, temperatures, RNG states); only the encoder and actor that act are read from it here. An export
(:func:`calql_robot.export_policy`) holds just those two under ``encoder.`` and ``actor.``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from calql_robot.agent.actor import TanhGaussianActor
from calql_robot.agent.config import AgentConfig
from calql_robot.agent.state import load_module
from calql_robot.api.policy import Policy
from calql_robot.errors import UserError

EXPORT_FORMAT = "calql_robot.policy"
EXPORT_VERSION = 1
EXPORT_JSON = "policy.json"
EXPORT_TENSORS = "policy.safetensors"
KNOWN_FILES = ("policy.json", "policy.safetensors", "tensors.safetensors", "state.json")
EXPECTED = ("a pretrain/finetune run directory (its newest complete checkpoint), one of its checkpoint folders "
            "(checkpoints/update_* or checkpoints/env_step_*), or a folder written by calql_robot.export_policy")


def load_policy(path: str | Path, device: str | torch.device = "auto", seed: int | None = None) -> Policy:
    """Load the acting part of a trained agent.

    ``path``: a run directory, one of its ``checkpoints/*`` folders, or an :func:`~calql_robot.export_policy` folder
    (a file inside one of these works too). ``device``: ``auto`` (CUDA when present), ``cpu``, ``cuda[:N]``.
    ``seed`` seeds the generator of stochastic actions (``deterministic=False``).
    """
    from calql_robot.training.session import resolve_device

    torch_device = device if isinstance(device, torch.device) else resolve_device(str(device))
    folder = Path(path).expanduser()
    if folder.is_file() and folder.name in KNOWN_FILES:
        folder = folder.parent
    if not folder.exists():
        raise UserError(f"load_policy: '{path}' does not exist; expected {EXPECTED}")
    if (folder / EXPORT_JSON).is_file():
        parts = read_export(folder)
    else:
        parts = read_checkpoint(folder)
    encoder, actor = build_networks(parts["agent_config"], parts["obs_spec"], parts["action_dim"], parts["where"])
    load_module(encoder, "encoder", parts["tensors"])
    load_module(actor, "actor", parts["tensors"])
    return Policy(encoder, actor, parts["obs_spec"], parts["action_dim"], torch_device, parts["metadata"], seed)


def build_networks(agent_config: Mapping[str, Any], obs_spec: Mapping[str, Any], action_dim: int,
                   where: str) -> tuple[torch.nn.Module, TanhGaussianActor]:
    """The encoder and actor exactly as ``CalQLAgent.__init__`` builds them, on the CPU and untrained.

    Their weights are overwritten by the loaded ones; the global torch RNG is left as it was.
    """
    from calql_robot.encoders import build_encoder

    try:
        cfg = AgentConfig.from_mapping(agent_config)
    except (UserError, TypeError) as err:
        raise UserError(f"{where}: the saved agent config does not fit this version of calql_robot ({err})") from None
    with torch.random.fork_rng(devices=[]):
        encoder = build_encoder(cfg.encoder, obs_spec)
        actor = TanhGaussianActor(int(encoder.out_dim), int(action_dim), cfg.actor_hidden, cfg.orthogonal_init)
    return encoder, actor


def read_checkpoint(folder: Path) -> dict[str, Any]:
    """Encoder/actor tensors, agent config, obs spec and metadata from a run directory or checkpoint folder."""
    from calql_robot.training.checkpoint import find_checkpoint, load_checkpoint, split_prefix

    ckpt = find_checkpoint(folder)
    if ckpt is None:
        raise UserError(f"load_policy: no checkpoint found at '{folder}'; expected {EXPECTED} (a run directory gets "
                        "its first checkpoint when pretrain/finetune saves one)")
    ckpt = ckpt.resolve()
    tensors, state = load_checkpoint(ckpt)
    where = f"checkpoint '{ckpt}'"
    meta = state.get("agent_meta")
    if not isinstance(meta, dict) or not all(k in meta for k in ("agent_config", "obs_spec", "action_dim")):
        raise UserError(f"{where}: state.json has no agent_meta with agent_config, obs_spec and action_dim, so the "
                        "policy cannot be rebuilt; it was not written by this version of pretrain/finetune")
    agent_tensors = split_prefix(tensors, "agent")
    averaged = float(meta["agent_config"].get("policy_ema_tau", 0.0) or 0.0) > 0 and any(
        k.startswith("actor_ema.") for k in agent_tensors)
    enc_name, actor_name = ("encoder_ema", "actor_ema") if averaged else ("encoder", "actor")
    chosen = {**_renamed(agent_tensors, enc_name, "encoder"), **_renamed(agent_tensors, actor_name, "actor")}
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    task_cfg = config.get("task") if isinstance(config.get("task"), dict) else None
    step = state.get("step")
    metadata = {
        "kind": "checkpoint",
        "source_checkpoint": str(ckpt),
        "step": step if isinstance(step, int) else None,
        "counter": state.get("counter"),
        "phase": state.get("phase"),
        "task": task_cfg.get("name") if task_cfg else None,
        "task_config": task_cfg,
        "agent_config": dict(meta["agent_config"]),
        "obs_spec": meta["obs_spec"],
        "action_dim": int(meta["action_dim"]),
        "networks": "averaged" if averaged else "live",
        "action_scaling": state.get("action_scaling"),
    }
    return {"tensors": chosen, "agent_config": meta["agent_config"], "obs_spec": meta["obs_spec"],
            "action_dim": int(meta["action_dim"]), "metadata": metadata, "where": where}


def read_export(folder: Path) -> dict[str, Any]:
    """The same parts as :func:`read_checkpoint`, from a folder written by :func:`calql_robot.export_policy`."""
    folder = folder.resolve()
    where = f"exported policy '{folder}'"
    try:
        info = json.loads((folder / EXPORT_JSON).read_text())
        tensors = load_file(str(folder / EXPORT_TENSORS))
    except (OSError, ValueError, SafetensorError) as err:
        raise UserError(f"{where} is unreadable or incomplete ({err}); expected {EXPORT_JSON} and {EXPORT_TENSORS} "
                        "as written by calql_robot.export_policy") from None
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
        raise UserError(f"{where}: {EXPORT_JSON} is not a calql_robot policy export (format "
                        f"{info.get('format') if isinstance(info, dict) else None!r}, expected '{EXPORT_FORMAT}')")
    if info.get("format_version") != EXPORT_VERSION:
        raise UserError(f"{where}: format_version {info.get('format_version')!r} is not supported; this version of "
                        f"calql_robot reads version {EXPORT_VERSION}: export the checkpoint again")
    missing = [k for k in ("agent_config", "obs_spec", "action_dim") if k not in info]
    if missing:
        raise UserError(f"{where}: {EXPORT_JSON} lacks {missing}; export the checkpoint again")
    source = info.get("source") if isinstance(info.get("source"), dict) else {}
    metadata = {
        "kind": "export",
        "export_dir": str(folder),
        "source_checkpoint": source.get("checkpoint"),
        "step": source.get("step"),
        "counter": source.get("counter"),
        "phase": source.get("phase"),
        "task": info.get("task"),
        "task_config": info.get("task_config"),
        "agent_config": dict(info["agent_config"]),
        "obs_spec": info["obs_spec"],
        "action_dim": int(info["action_dim"]),
        "networks": info.get("networks"),
        "action_scaling": info.get("action_scaling"),
        "format_version": info["format_version"],
    }
    return {"tensors": tensors, "agent_config": info["agent_config"], "obs_spec": info["obs_spec"],
            "action_dim": int(info["action_dim"]), "metadata": metadata, "where": where}


def _renamed(tensors: Mapping[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    """Entries ``old.*`` renamed to ``new.*``."""
    start = old + "."
    return {new + "." + k[len(start):]: v for k, v in tensors.items() if k.startswith(start)}
