"""Print a summary of a zarr dataset store: sizes, success rate, episode lengths, keys, action bounds, returns.

    python -m calql_robot.inspect_dataset dataset=data/antmaze_umaze.zarr [verify=true]

The store is validated on open (a broken store prints ``error: ...`` naming the array and exits with status 2):
structure, every chunk file of a committed row present (full chunks with their recorded size), low-dim values
finite and actions within the bounds. It is read lazily, so only the low-dim arrays are streamed and images are
not loaded; ``verify=true`` decodes every chunk and compares it with the digest recorded when it was written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from calql_robot.app import calql_app
from calql_robot.errors import UserError


def _size(n_bytes: int) -> str:
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _vector(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def summarize(path: str | Path, cache_bytes: int = 256 * 1024**2, verify: bool = False) -> dict[str, Any]:
    """Open the store at ``path`` (validating it; ``verify``: every chunk's digest too) and return what the app
    prints."""
    from calql_robot.datasets.format import ZarrDataset

    ds = ZarrDataset(path, lazy=True, cache_bytes=cache_bytes, verify=verify)
    lengths = ds.episode_lengths
    returns = ds.episode_returns()
    success = ds.success_mask()
    arrays = ds.arrays()
    return {
        "path": str(ds.path),
        "format": f"{ds.attrs['format']} v{ds.attrs['format_version']}",
        "task": ds.attrs["task"],
        "control_freq": ds.attrs["control_freq"],
        "source": ds.attrs["source"],
        "reward": ds.attrs["reward"],
        "episodes": ds.n_episodes,
        "transitions": ds.n_transitions,
        "successes": int(success.sum()),
        "success_rate": float(success.mean()) if len(success) else None,
        "length": (int(lengths.min()), float(lengths.mean()), int(lengths.max())) if len(lengths) else None,
        "return": (float(returns.mean()), float(returns.min()), float(returns.max())) if len(returns) else None,
        "terminal_steps": int(np.asarray(arrays["terminal"][:]).sum()),
        "truncated_steps": int(np.asarray(arrays["truncated"][:]).sum()),
        "obs_spec": ds.obs_spec,
        "action_dim": ds.action_dim,
        "action_low": ds.action_low,
        "action_high": ds.action_high,
        "disk_bytes": ds.size_on_disk_bytes(),
        "ram_bytes": ds.size_in_ram_bytes(),
        "integrity": ds.integrity,
        "has_records": "integrity" in ds.attrs,
    }


def _integrity_line(info: dict[str, Any]) -> str:
    checked = info.get("integrity")
    if checked is None:
        what = "chunk files present" + (" with their recorded sizes" if info.get("has_records") else "")
        return f"integrity:      {what} (verify=true also checks every chunk's digest)"
    line = f"integrity:      verified {checked['chunks_verified']} chunks ({checked['algorithm']})"
    if checked["chunks_decoded"]:
        line += f"; {checked['chunks_decoded']} chunks without a digest decoded only"
    if checked["arrays_without_records"]:
        line += f" (no records: {', '.join(checked['arrays_without_records'])}; written before digests existed)"
    return line


def format_summary(info: dict[str, Any]) -> str:
    """Human-readable multi-line text of :func:`summarize`'s dict."""
    lines = [
        f"dataset:        {info['path']}",
        f"format:         {info['format']}",
        f"task:           {info['task']}  (control frequency {info['control_freq']:g} Hz)",
        f"source:         {json.dumps(info['source'], sort_keys=True)}",
        f"episodes:       {info['episodes']}",
        f"transitions:    {info['transitions']}",
    ]
    reward = info["reward"]
    if info["episodes"]:
        lines.append(
            f"success rate:   {info['success_rate']:.3f} ({info['successes']} of {info['episodes']} episodes have a "
            f"step with reward >= {reward['success']:g})"
        )
        lo, mean, hi = info["length"]
        lines.append(f"episode length: min {lo} / mean {mean:.1f} / max {hi}")
        r_mean, r_min, r_max = info["return"]
        lines.append(f"return (raw, undiscounted): mean {r_mean:.4g} / min {r_min:.4g} / max {r_max:.4g}")
    else:
        lines.append("success rate:   n/a (no episodes)")
    lines.append(f"reward values:  success {reward['success']:g}, failure {reward['failure']:g} (raw)")
    lines.append(f"episode ends:   {info['terminal_steps']} terminal steps, {info['truncated_steps']} truncated steps")
    lines.append("keys:")
    for key, entry in sorted(info["obs_spec"].items()):
        shape = str(tuple(entry["shape"]))
        lines.append(f"  obs/{key:<24} {shape:<16} {entry['dtype']:<8} {entry['kind']}")
    lines.append(f"  {'action':<28} {str((info['action_dim'],)):<16} float32")
    lines.append(f"action bounds:  low {_vector(info['action_low'])}")
    lines.append(f"                high {_vector(info['action_high'])}")
    disk, ram = info["disk_bytes"], info["ram_bytes"]
    ratio = f" (compression {ram / disk:.1f}x)" if disk else ""
    lines.append(f"size on disk:   {_size(disk)}")
    lines.append(f"size in RAM:    {_size(ram)}{ratio}")
    lines.append(_integrity_line(info))
    return "\n".join(lines)


@calql_app("inspect_dataset")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: validate the store named by ``dataset=`` and print its summary."""
    if OmegaConf.is_missing(cfg, "dataset") or cfg.get("dataset") in (None, ""):
        raise UserError("dataset=PATH is required (e.g. python -m calql_robot.inspect_dataset dataset=data/x.zarr)")
    try:
        cache_mb = float(cfg.get("cache_mb", 256))
    except (TypeError, ValueError):
        raise UserError(f"cache_mb must be a number of MiB >= 0, got {cfg.get('cache_mb')!r}") from None
    if not cache_mb >= 0 or cache_mb == float("inf"):
        raise UserError(f"cache_mb must be a number of MiB >= 0, got {cache_mb}")
    verify = cfg.get("verify", False)
    if not isinstance(verify, bool):
        raise UserError(f"verify must be true or false, got {verify!r}")
    print(format_summary(summarize(str(cfg.dataset), int(cache_mb * 1024**2), verify=verify)))


if __name__ == "__main__":
    main()
