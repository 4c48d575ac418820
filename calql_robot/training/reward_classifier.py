"""``python -m calql_robot.train_reward_classifier``: train a binary success classifier on a store's camera frames.

Steps: check every option; open the store (and the ``extra_datasets``, e.g. policy rollouts whose rewards are the
simulator's: their failed episodes are the negatives the scripted data lacks) and label their frames
(:mod:`calql_robot.training.reward_data`); split all their episodes into training and held-out ones (seeded, per
outcome); train the classifier (:mod:`calql_robot.training.reward_model`) with Adam on batches holding
``positive_fraction`` success frames, every image random-shifted as the critic's are; score the held-out episodes
(:mod:`calql_robot.training.reward_metrics`, also per store when there are several); write the output folder.
Everything is checked before anything is written, and the folder is built at a temporary sibling and renamed into
place when complete, so a refused or failed run leaves nothing (and an existing output untouched).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from calql_robot.config_rules import (
    check_keys,
    check_output_location,
    flag,
    number,
    path,
    plain_value,
    whole,
)
from calql_robot.errors import UserError
from calql_robot.training.config_check import DEVICE, SEED, THREADS
from calql_robot.training.reward_data import FrameSet, choose_cameras, merge_frames, read_frames, split_episodes
from calql_robot.training.reward_metrics import held_out_metrics, write_calibration
from calql_robot.training.reward_model import RewardClassifierNet, save_classifier

WHERE = "see configs/train_reward_classifier.yaml or --help"
RULES = {
    "dataset": path(), "output": path(), "overwrite": flag(), "positive_frames": whole(minimum=1, maximum=10_000),
    "ignore_frames": whole(minimum=0, maximum=10_000), "val_fraction": number(above=0.0, maximum=0.9),
    "steps": whole(minimum=1), "batch_size": whole(minimum=2, maximum=2**16),
    "positive_fraction": number(above=0.0, maximum=0.99), "lr": number(above=0.0, maximum=1.0),
    "weight_decay": number(minimum=0.0, maximum=1.0), "threshold": number(minimum=0.0, maximum=1.0),
    "consecutive": whole(minimum=1, maximum=10_000), "log_every": whole(minimum=1), "device": DEVICE,
    "threads": THREADS, "seed": SEED, "cache_mb": whole(minimum=1, maximum=2**24),
}
OUTPUT_FILES = ("classifier.safetensors", "classifier.json", "metrics.json", "calibration.csv", "calibration.png",
                "train.csv")


def extra_datasets(cfg: DictConfig) -> list[str]:
    """The ``extra_datasets`` option as a list of paths (null or [] = none)."""
    extra = plain_value(cfg, "extra_datasets")
    if extra is None:
        return []
    if isinstance(extra, str) or not isinstance(extra, list) or not all(isinstance(p, str) and p.strip()
                                                                          for p in extra):
        raise UserError(f"extra_datasets={extra!r} must be null or a list of store paths, e.g. "
                        "extra_datasets=[runs/deploy/NAME/online.zarr] (a deploy run with deploy.reward_source=env)")
    return [str(p) for p in extra]


def check_config(cfg: DictConfig) -> Path:
    """Every option's type and range, and where the output may go; returns the resolved output path."""
    check_keys(cfg, RULES, WHERE)
    extras = extra_datasets(cfg)
    cameras = plain_value(cfg, "cameras")
    if cameras is not None and not (isinstance(cameras, str) or isinstance(cameras, list)):
        raise UserError(f"cameras={cameras!r} must be null (every rgb key of the store), a key or a list of keys")
    output = check_output_location(plain_value(cfg, "output"))
    if output.exists() and not plain_value(cfg, "overwrite"):
        raise UserError(f"output={cfg.output} already exists ({output}); pass overwrite=true to replace it or choose "
                        "a new folder")
    stores = [("dataset", str(cfg.dataset))] + [(f"extra_datasets[{i}]", p) for i, p in enumerate(extras)]
    for key, raw in stores:
        store = Path(raw).expanduser().resolve()
        if output == store or store in output.parents or output in store.parents:
            raise UserError(f"output={cfg.output} ({output}) overlaps {key}={raw} ({store}); writing there "
                            "would change or delete the data; choose an output folder apart from the store")
    return output


def _open_store(raw: str, key: str, cfg: DictConfig) -> Any:
    from calql_robot.datasets.format import ZarrDataset

    store = Path(raw).expanduser()
    if not store.exists():
        raise UserError(f"{key}={raw}: no such store ({store.resolve()}); expected a calql_robot zarr "
                        "store, e.g. data/pick_place.zarr (make one with python -m calql_robot.collect)")
    return ZarrDataset(store, lazy=True, cache_bytes=int(cfg.cache_mb) * 1024**2)


def _check_cameras(dataset: Any, key: str, spec: dict[str, Any]) -> None:
    """Refuse an extra store without the main store's cameras at the same image shapes."""
    for camera, want in spec.items():
        have = dataset.obs_spec.get(camera)
        if have is None or [int(n) for n in have["shape"]] != [int(n) for n in want["shape"]]:
            got = "no such key" if have is None else f"shape {list(have['shape'])}"
            raise UserError(f"{key}={dataset.path} has {got} for camera {camera!r}, but the main store (dataset=) "
                            f"gives it as {list(want['shape'])}; every store must hold the same cameras "
                            "at the same image size")


def _batch(frames: FrameSet, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(images[rows]).to(device) for key, images in frames.images.items()}


def train(net: RewardClassifierNet, frames: FrameSet, train_rows: np.ndarray, cfg: DictConfig,
          device: torch.device) -> list[dict[str, float]]:
    """Adam on binary cross-entropy; each batch draws ``positive_fraction`` of its rows from the training positives
    (with replacement) and the rest from the negatives. Returns the logged rows (step, loss, accuracy, seconds)."""
    rng = np.random.default_rng(int(cfg.seed))
    positives = train_rows[frames.labels[train_rows] == 1]
    negatives = train_rows[frames.labels[train_rows] == 0]
    n_pos = max(1, round(float(cfg.positive_fraction) * int(cfg.batch_size)))
    n_neg = int(cfg.batch_size) - n_pos
    target = torch.cat([torch.ones(n_pos), torch.zeros(n_neg)]).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
    net.train()
    log, started, loss_sum, correct, seen = [], time.perf_counter(), 0.0, 0, 0
    for step in range(1, int(cfg.steps) + 1):
        rows = np.concatenate([rng.choice(positives, n_pos), rng.choice(negatives, n_neg)])
        logits = net(_batch(frames, rows, device), augment=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach())
        correct += int(((logits.detach() >= 0).float() == target).sum())
        seen += len(rows)
        if step % int(cfg.log_every) == 0 or step == int(cfg.steps):
            count = step - (log[-1]["step"] if log else 0)
            row = {"step": step, "loss": loss_sum / count, "accuracy": correct / seen,
                   "seconds": time.perf_counter() - started}
            log.append(row)
            print(f"step {step}/{cfg.steps}: loss {row['loss']:.4f}, batch accuracy {row['accuracy']:.3f} "
                  f"({row['seconds']:.0f} s)", flush=True)
            loss_sum, correct, seen = 0.0, 0, 0
    net.eval()
    return log


@torch.no_grad()
def predict(net: RewardClassifierNet, frames: FrameSet, rows: np.ndarray, device: torch.device,
            batch_size: int = 256) -> np.ndarray:
    """(len(rows),) float64 success probabilities of the frames ``rows`` (no augmentation)."""
    out = [torch.sigmoid(net(_batch(frames, rows[i:i + batch_size], device))).double().cpu()
           for i in range(0, len(rows), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def _write_outputs(folder: Path, net: RewardClassifierNet, meta: dict[str, Any], metrics: dict[str, Any],
                   rows: list[dict[str, Any]], log: list[dict[str, float]], title: str) -> None:
    save_classifier(folder, net, meta)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_calibration(folder, rows, title)
    with open(folder / "train.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "loss", "accuracy", "seconds"])
        writer.writeheader()
        writer.writerows(log)


def run_train_reward_classifier(cfg: DictConfig) -> dict[str, Any]:
    """The app's work; returns the held-out metrics (also written to ``output/metrics.json``)."""
    from calql_robot.datasets.staging import staged_store
    from calql_robot.training.session import resolve_device, seed_everything
    from calql_robot.training.threads import apply_threads

    output = check_config(cfg)
    dataset = _open_store(str(cfg.dataset), "dataset", cfg)
    store = str(dataset.path)
    cameras = choose_cameras(dataset.obs_spec, plain_value(cfg, "cameras"), store)
    spec = {key: dict(dataset.obs_spec[key]) for key in cameras}
    extras = [_open_store(raw, f"extra_datasets[{i}]", cfg) for i, raw in enumerate(extra_datasets(cfg))]
    for i, extra in enumerate(extras):
        _check_cameras(extra, f"extra_datasets[{i}]", spec)
    if dataset.n_episodes + sum(extra.n_episodes for extra in extras) == 0:
        raise UserError(f"dataset {store} holds no episode; the classifier needs successful and failed episodes")
    success = np.concatenate([d.success_mask() for d in [dataset, *extras]])
    names = store if not extras else f"{store} and the extra_datasets"
    train_eps, val_eps = split_episodes(success, float(cfg.val_fraction), int(cfg.seed), names)
    device = resolve_device(str(cfg.device))
    apply_threads(plain_value(cfg, "threads"), spec, device)
    seed_everything(int(cfg.seed))
    encoder_cfg = plain_value(cfg, "encoder") or {}
    net = RewardClassifierNet(spec, encoder_cfg).to(device)  # bad encoder options fail here, before any reading
    print(f"reading {store}: cameras {cameras}, {dataset.n_episodes} episodes "
          f"({int(success[:dataset.n_episodes].sum())} successful)",
          flush=True)
    for extra in extras:
        print(f"reading {extra.path}: {extra.n_episodes} episodes ({int(extra.success_mask().sum())} successful)",
              flush=True)
    frames, origin = merge_frames([read_frames(d, cameras, int(cfg.positive_frames), int(cfg.ignore_frames))
                                   for d in [dataset, *extras]])
    in_train = np.isin(frames.episode, train_eps)
    train_rows = np.flatnonzero(in_train & (frames.labels >= 0))
    val_rows = np.flatnonzero(np.isin(frames.episode, val_eps))
    print(f"training on {len(train_eps)} episodes ({int((frames.labels[train_rows] == 1).sum())} success frames, "
          f"{int((frames.labels[train_rows] == 0).sum())} others), holding out {len(val_eps)} episodes", flush=True)
    log = train(net, frames, train_rows, cfg, device)
    probs = predict(net, frames, val_rows, device)
    threshold, consecutive = float(cfg.threshold), int(cfg.consecutive)
    metrics, rows = held_out_metrics(probs, frames.labels[val_rows], frames.episode[val_rows], frames.success,
                                     threshold, consecutive)
    metrics["held_out_episodes"] = [int(e) for e in val_eps]
    if extras:  # the held-out episodes of each store apart: the policy rollouts are the harder ones
        metrics["by_store"] = {}
        for i, d in enumerate([dataset, *extras]):
            mine = np.isin(frames.episode[val_rows], np.flatnonzero(origin == i))
            if mine.any():
                part = held_out_metrics(probs[mine], frames.labels[val_rows][mine], frames.episode[val_rows][mine],
                                        frames.success, threshold, consecutive)[0]
                metrics["by_store"][str(d.path)] = {k: part[k] for k in ("precision", "recall", "episodes")}
    meta = {
        "obs_spec": spec, "cameras": cameras, "encoder": dict(encoder_cfg), "threshold": threshold,
        "consecutive": consecutive, "metrics": {k: v for k, v in metrics.items() if k != "held_out_episodes"},
        "training": {"dataset": store, "extra_datasets": [str(d.path) for d in extras],
                     "task": dataset.attrs.get("task"),
                     "config": OmegaConf.to_container(cfg, resolve=True),
                     "train_episodes": len(train_eps), "held_out_episodes": len(val_eps)},
    }
    title = (f"reward classifier on {Path(store).name}\nheld-out frames: precision {metrics['precision']:.3f}, "
             f"recall {metrics['recall']:.3f}")
    with staged_store(output, overwrite=bool(cfg.overwrite)) as tmp:
        tmp.mkdir(parents=True)
        _write_outputs(tmp, net, meta, metrics, rows, log, title)
    print(f"held-out frames: precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}, "
          f"accuracy {metrics['accuracy']:.3f}, F1 {metrics['f1']:.3f} at threshold {threshold:g} "
          f"({metrics['positive_frames']} success frames of {metrics['frames']})")
    agreement = metrics["episodes"]
    print(f"held-out episodes: outcome by classifier (threshold {threshold:g}, {consecutive} frames in a row) agrees "
          f"with the store on {agreement['agreement']:.3f} of {agreement['episodes']}")
    for name, part in metrics.get("by_store", {}).items():
        print(f"  {name}: agreement {part['episodes']['agreement']:.3f} of {part['episodes']['episodes']} held-out "
              f"episodes, frames precision {part['precision']:.3f}, recall {part['recall']:.3f}")
    print(f"wrote {output}: {', '.join(OUTPUT_FILES)}")
    return metrics
