"""The reward classifier's network and its files: the project's camera encoder plus a linear head, saved as
``classifier.safetensors`` (every tensor) and ``classifier.json`` (what is needed to rebuild it); nothing is pickled.

The network maps the camera images of one observation, ``{key: (B, H, W, C) uint8}``, to one success logit per
row. Its encoder is :func:`calql_robot.encoders.build_encoder` on an obs spec that holds only the chosen cameras, so
the conv trunk, the projection (Linear -> LayerNorm -> tanh) and the DrQ random shift (``augment=True``) are those
of the critic. ``classifier.json`` holds ``format``, ``format_version``, ``obs_spec`` (the cameras), ``cameras``,
``encoder`` (the encoder block), ``threshold``, ``consecutive`` (the defaults of the success rule) and free-form
``training`` / ``metrics`` entries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from calql_robot.encoders import build_encoder
from calql_robot.errors import UserError

FORMAT = "calql_robot.reward_classifier"
FORMAT_VERSION = 1
TENSORS_FILE = "classifier.safetensors"
META_FILE = "classifier.json"
REQUIRED_META = ("format", "format_version", "obs_spec", "cameras", "encoder", "threshold", "consecutive")


class RewardClassifierNet(nn.Module):
    """Camera encoder + Linear(out_dim, 1): ``forward(obs, augment)`` -> (B,) success logits."""

    def __init__(self, obs_spec: Mapping[str, Mapping[str, Any]], encoder_cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.cameras = sorted(obs_spec)
        self.encoder = build_encoder(dict(encoder_cfg), obs_spec)
        self.head = nn.Linear(int(self.encoder.out_dim), 1)

    def forward(self, obs: Mapping[str, torch.Tensor], augment: bool = False) -> torch.Tensor:
        """(B,) logits of "this frame shows success" for a batch of uint8 channels-last images per camera."""
        return self.head(self.encoder(obs, augment=augment)).squeeze(-1)


def save_classifier(folder: Path, net: RewardClassifierNet, meta: Mapping[str, Any]) -> None:
    """Write ``classifier.safetensors`` and ``classifier.json`` into ``folder`` (which must exist)."""
    missing = [key for key in REQUIRED_META if key not in meta and key not in ("format", "format_version")]
    if missing:
        raise ValueError(f"classifier metadata lacks {missing}")
    tensors = {name: value.detach().cpu().contiguous() for name, value in net.state_dict().items()}
    save_file(tensors, str(folder / TENSORS_FILE))
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, **dict(meta)}
    (folder / META_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def classifier_files(path: str | Path) -> tuple[Path, Path]:
    """(json, safetensors) of a classifier given as its folder or either of its two files; UserError if absent."""
    given = Path(path).expanduser()
    folder = given.parent if given.name in (META_FILE, TENSORS_FILE) else given
    if not folder.is_dir():
        raise UserError(f"reward classifier {given} does not exist; expected the output folder of "
                        "`python -m calql_robot.train_reward_classifier` (holding classifier.json and "
                        "classifier.safetensors)")
    meta_path, tensors_path = folder / META_FILE, folder / TENSORS_FILE
    for needed in (meta_path, tensors_path):
        if not needed.is_file():
            raise UserError(f"reward classifier folder {folder} has no {needed.name}; expected both {META_FILE} and "
                            f"{TENSORS_FILE} as written by `python -m calql_robot.train_reward_classifier`")
    return meta_path, tensors_path


def read_meta(meta_path: Path) -> dict[str, Any]:
    """The checked contents of ``classifier.json``."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"reward classifier file {meta_path} is not readable JSON ({err}); expected the "
                        "classifier.json written by `python -m calql_robot.train_reward_classifier`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{meta_path} is not a reward classifier file: its 'format' is "
                        f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{meta_path} has format_version {meta.get('format_version')!r}; this calql_robot reads "
                        f"version {FORMAT_VERSION}")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise UserError(f"{meta_path} lacks the key(s) {missing}; expected {list(REQUIRED_META)}")
    threshold, consecutive = meta["threshold"], meta["consecutive"]
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 <= float(threshold) <= 1.0:
        raise UserError(f"{meta_path}: threshold is {threshold!r}; expected a probability in [0, 1]")
    if not isinstance(consecutive, int) or isinstance(consecutive, bool) or consecutive < 1:
        raise UserError(f"{meta_path}: consecutive is {consecutive!r}; expected a whole number >= 1")
    spec = meta["obs_spec"]
    if not isinstance(spec, dict) or not spec or sorted(spec) != sorted(meta["cameras"]):
        raise UserError(f"{meta_path}: obs_spec {spec!r} must describe exactly the cameras {meta['cameras']!r}")
    return meta


def load_net(path: str | Path, device: torch.device | str = "cpu") -> tuple[RewardClassifierNet, dict[str, Any]]:
    """Rebuild the network of the classifier at ``path`` (folder or one of its files) in eval mode on ``device``."""
    meta_path, tensors_path = classifier_files(path)
    meta = read_meta(meta_path)
    net = RewardClassifierNet(meta["obs_spec"], meta["encoder"])
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError) as err:
        raise UserError(f"reward classifier tensors {tensors_path} are unreadable or corrupt ({err}); expected the "
                        "safetensors file written with its classifier.json") from None
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"reward classifier tensors {tensors_path} do not fit the network described by {meta_path} "
                        f"({first}); the two files must come from the same training run") from None
    return net.to(device).eval(), meta
