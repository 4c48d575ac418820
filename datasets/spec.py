"""Constants of the zarr dataset format (version 1) and observation-spec helpers.

An *obs spec* maps each observation key to ``{"shape": [...], "dtype": str, "kind": "rgb" | "low_dim"}``.
rgb keys are uint8 ``(H, W, C)`` images (HWC, right side up); low-dim keys are float32 vectors or arrays.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import zarr.codecs

from calql_robot.errors import UserError

FORMAT_NAME = "calql_robot.zarr_dataset"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

KIND_RGB = "rgb"
KIND_LOW_DIM = "low_dim"
KINDS = (KIND_RGB, KIND_LOW_DIM)

#: rows per chunk along time for image arrays (one chunk = 64 frames) and for low-dim / per-step arrays.
IMAGE_CHUNK_LEN = 64
LOW_DIM_CHUNK_LEN = 4096
#: rows per chunk of ``meta/episode_ends`` and of ``data/final_obs/<key>`` for low-dim keys.
EPISODE_CHUNK_LEN = 1024

#: per-step arrays under ``data/`` besides observations: name -> (dtype, trailing shape is (A,) for action only)
STEP_ARRAYS = {"action": "float32", "reward": "float32", "terminal": "bool", "truncated": "bool"}
#: optional per-step arrays (documented extensions of the format): present in a store only when it was created with
#: them. ``intervention``: the step's action came from a person (or scripted intervener) taking over, not the policy.
OPTIONAL_STEP_ARRAYS = {"intervention": "bool"}

_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def image_compressor() -> zarr.codecs.ZstdCodec:
    """Zstandard level 3 over whole uint8 image chunks: on rendered 64x64 frames it compressed 10.5x and decoded
    faster than every Blosc variant measured (bench/dataset_compression.py; numbers in docs/dataset_format.md).

    With the frame checksum (4 bytes per chunk), so a corrupt image chunk fails to decode instead of reading as
    wrong pixels."""
    return zarr.codecs.ZstdCodec(level=3, checksum=True)


def low_dim_compressor(itemsize: int) -> zarr.codecs.BloscCodec:
    """Blosc codec for low-dim float32 / bool / int64 chunks (byte shuffle groups the float exponents)."""
    return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=itemsize)


def validate_obs_spec(obs_spec: Any, where: str) -> dict[str, dict[str, Any]]:
    """Check an obs spec and return a normalised copy (shape as list of ints, dtype/kind as str).

    ``where`` names the source (a store path or "DatasetWriter.create") for the error message.
    """
    if not isinstance(obs_spec, dict) or not obs_spec:
        raise UserError(f"{where}: obs_spec must be a non-empty dict of key -> {{shape, dtype, kind}}, got {obs_spec}")
    normalised: dict[str, dict[str, Any]] = {}
    for key, entry in obs_spec.items():
        if not isinstance(key, str) or not _KEY_PATTERN.match(key):
            raise UserError(f"{where}: observation key {key!r} must be a name of letters, digits, '_', '.', '-'")
        if not isinstance(entry, dict) or not {"shape", "dtype", "kind"} <= set(entry):
            raise UserError(f"{where}: obs_spec['{key}'] must have 'shape', 'dtype' and 'kind', got {entry!r}")
        try:
            shape = [int(s) for s in entry["shape"]]
        except (TypeError, ValueError):
            got = entry["shape"]
            raise UserError(f"{where}: obs_spec['{key}'].shape must be a list of ints, got {got!r}") from None
        kind, dtype = str(entry["kind"]), str(entry["dtype"])
        if kind not in KINDS:
            raise UserError(f"{where}: obs_spec['{key}'].kind must be one of {KINDS}, got {kind!r}")
        if any(s < 1 for s in shape):
            raise UserError(f"{where}: obs_spec['{key}'].shape must have positive sizes, got {shape}")
        if kind == KIND_RGB and (len(shape) != 3 or shape[2] not in (1, 3, 4) or dtype != "uint8"):
            raise UserError(
                f"{where}: rgb key '{key}' must be uint8 with shape [H, W, C] (C = 1, 3 or 4), got {dtype} {shape}"
            )
        if kind == KIND_LOW_DIM and dtype != "float32":
            raise UserError(f"{where}: low_dim key '{key}' must have dtype float32, got {dtype}")
        normalised[key] = {"shape": shape, "dtype": dtype, "kind": kind}
    return normalised


def obs_spec_from_space(space: Any) -> dict[str, dict[str, Any]]:
    """Derive an obs spec from a ``gymnasium.spaces.Dict`` of ``Box`` spaces.

    A uint8 Box of shape ``(H, W, 3)`` is an rgb key; every other Box is a low-dim key stored as float32.
    """
    from gymnasium import spaces

    if not isinstance(space, spaces.Dict):
        raise UserError(f"obs_spec_from_space: expected a gymnasium.spaces.Dict observation space, got {space!r}")
    spec: dict[str, dict[str, Any]] = {}
    for key, sub in space.spaces.items():
        if not isinstance(sub, spaces.Box):
            raise UserError(f"obs_spec_from_space: observation key '{key}' is {sub!r}; only Box spaces are supported")
        shape = [int(s) for s in sub.shape]
        if np.dtype(sub.dtype) == np.uint8 and len(shape) == 3 and shape[2] == 3:
            spec[str(key)] = {"shape": shape, "dtype": "uint8", "kind": KIND_RGB}
        else:
            spec[str(key)] = {"shape": shape, "dtype": "float32", "kind": KIND_LOW_DIM}
    return validate_obs_spec(spec, "obs_spec_from_space")
