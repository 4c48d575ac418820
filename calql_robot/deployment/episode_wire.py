"""Episodes and policy weights as bytes frames (``envs/robot/wire.py``'s format): a JSON header + raw numpy buffers.

Actor -> learner, one finished episode (an ``EpisodeRecorder.finish()`` dict, N steps, A action dims)::

    header {"kind": "episode", "actor": 1, "restarts": 0, "policy_version": 12, "env_seed": 123456,
            "success": false}
    arrays obs/<key> (N+1, *shape) in the obs spec's dtype, action (N, A) float32, reward (N,) float32,
           terminal (N,) bool, truncated (N,) bool

Learner -> actors, the policy weights (``policy_weights(agent)``: the encoder's and actor's state dicts)::

    header {"kind": "weights", "version": 340}
    arrays encoder/<state-dict key>, actor/<state-dict key>   (float32 / int64 ... tensors as numpy)

Nothing is unpickled: :func:`~calql_robot.envs.robot.wire.decode` checks sizes and dtypes against
:data:`ACTOR_LIMITS` first, then these functions check the header fields, the exact set of arrays, their shapes,
dtypes and finiteness, and raise :class:`~calql_robot.envs.robot.wire.ProtocolError` (a UserError) on any mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from calql_robot.envs.robot.wire import ProtocolError, WireLimits, decode, encode

# An image episode of 500 steps with two 128x128 cameras is ~50 MB; a ResNet-18 encoder's weights ~45 MB.
ACTOR_LIMITS = WireLimits(max_message_bytes=512 << 20, max_arrays=1024, max_header_bytes=64 << 10)
EPISODE_FIELDS = {"actor", "restarts", "policy_version", "env_seed", "success"}


def _whole(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def episode_frames(episode: Mapping[str, Any], meta: Mapping[str, Any]) -> list[bytes]:
    """Frames of one finished episode; ``meta`` holds actor, restarts, policy_version, env_seed (whole numbers)."""
    arrays = {f"obs/{k}": np.asarray(v) for k, v in episode["observations"].items()}
    arrays.update(action=np.asarray(episode["actions"], np.float32), reward=np.asarray(episode["rewards"], np.float32),
                  terminal=np.asarray(episode["terminals"], bool), truncated=np.asarray(episode["truncations"], bool))
    header = {"kind": "episode", **{k: int(meta[k]) for k in ("actor", "restarts", "policy_version", "env_seed")},
              "success": bool(episode["success"])}
    return encode(header, arrays)


def decode_episode(frames: Sequence[Any], obs_spec: Mapping[str, Mapping[str, Any]], action_dim: int,
                   limits: WireLimits = ACTOR_LIMITS) -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta, episode) from :func:`episode_frames` output; ``episode`` has the ``EpisodeRecorder.finish()`` keys.

    Refuses (ProtocolError) a frame that is not an episode, lacks or adds arrays, or whose shapes, dtypes or values
    (NaN / inf) do not fit ``obs_spec`` and ``action_dim``.
    """
    header, arrays = decode(frames, limits)
    if header.get("kind") != "episode":
        raise ProtocolError(f"expected an episode message, got kind {str(header.get('kind'))[:40]!r}")
    extra = set(header) - EPISODE_FIELDS - {"kind", "v"}
    if extra or not all(_whole(header.get(k)) for k in EPISODE_FIELDS - {"success"}) \
            or not isinstance(header.get("success"), bool):
        raise ProtocolError(f"episode header fields {sorted(header)[:12]} are not {sorted(EPISODE_FIELDS)} with whole "
                            "numbers >= 0 and a true/false success")
    expected = {f"obs/{k}" for k in obs_spec} | {"action", "reward", "terminal", "truncated"}
    if set(arrays) != expected:
        raise ProtocolError(f"episode arrays {sorted(arrays)[:12]} differ from the expected {sorted(expected)}")
    action = arrays["action"]
    if action.dtype != np.float32 or action.ndim != 2 or action.shape[1] != action_dim or len(action) < 1:
        raise ProtocolError(f"episode array 'action' is {action.dtype}{list(action.shape)}; expected float32 "
                            f"(N, {action_dim}) with N >= 1")
    n = len(action)
    for name, dtype in (("reward", np.float32), ("terminal", np.bool_), ("truncated", np.bool_)):
        if arrays[name].dtype != dtype or arrays[name].shape != (n,):
            raise ProtocolError(f"episode array '{name}' is {arrays[name].dtype}{list(arrays[name].shape)}; expected "
                                f"{np.dtype(dtype).name} ({n},)")
    observations = {}
    for key, entry in obs_spec.items():
        obs = arrays[f"obs/{key}"]
        shape = (n + 1, *entry["shape"])
        if obs.dtype.name != entry["dtype"] or obs.shape != shape:
            raise ProtocolError(f"episode array 'obs/{key}' is {obs.dtype}{list(obs.shape)}; expected "
                                f"{entry['dtype']}{list(shape)} (N + 1 observations)")
        observations[key] = obs
    floats = [action, arrays["reward"], *(o for o in observations.values() if o.dtype.kind == "f")]
    if not all(np.isfinite(a).all() for a in floats):
        raise ProtocolError("episode holds NaN or inf in its actions, rewards or observations")
    if not (arrays["terminal"][-1] or arrays["truncated"][-1]) or (arrays["terminal"][:-1].any()):
        raise ProtocolError("episode must end with its only terminal step or a truncated last step")
    meta = {k: header[k] for k in EPISODE_FIELDS}
    episode = {"observations": observations, "actions": action, "rewards": arrays["reward"],
               "terminals": arrays["terminal"], "truncations": arrays["truncated"], "success": header["success"]}
    return meta, episode


def weights_frames(weights: Mapping[str, Mapping[str, torch.Tensor]], version: int) -> list[bytes]:
    """Frames of ``policy_weights(agent)`` ({"encoder": state_dict, "actor": state_dict}) at ``version``."""
    arrays = {f"{part}/{key}": tensor.detach().cpu().numpy() for part, state in weights.items()
              for key, tensor in state.items()}
    return encode({"kind": "weights", "version": int(version)}, arrays)


def decode_weights(frames: Sequence[Any], reference: Mapping[str, Mapping[str, torch.Tensor]],
                   limits: WireLimits = ACTOR_LIMITS) -> tuple[int, dict[str, dict[str, torch.Tensor]]]:
    """(version, {"encoder": state_dict, "actor": state_dict}) checked key by key against ``reference`` (the
    receiving snapshot's own state dicts: same names, shapes and dtypes); ProtocolError otherwise."""
    header, arrays = decode(frames, limits)
    version = header.get("version")
    if header.get("kind") != "weights" or not _whole(version) or set(header) - {"kind", "version", "v"}:
        raise ProtocolError(f"expected a weights message with a whole-number version, got header "
                            f"{str(header)[:200]}")
    expected = {f"{part}/{key}": t for part, state in reference.items() for key, t in state.items()}
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays))[:5], sorted(set(arrays) - set(expected))[:5]
        raise ProtocolError(f"weights message does not match the policy: missing {missing}, unexpected {extra}")
    out: dict[str, dict[str, torch.Tensor]] = {part: {} for part in reference}
    for name, ref in expected.items():
        arr = arrays[name]
        if ref.dim() == 0 and arr.shape == (1,):
            arr = arr.reshape(())  # wire.encode sends a 0-d array as shape [1] (np.ascontiguousarray)
        if tuple(arr.shape) != tuple(ref.shape) or torch.from_numpy(np.zeros(1, arr.dtype)).dtype != ref.dtype:
            raise ProtocolError(f"weights array '{name}' is {arr.dtype}{list(arr.shape)}; the policy has "
                                f"{ref.dtype}{list(ref.shape)}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ProtocolError(f"weights array '{name}' holds NaN or inf")
        part, key = name.split("/", 1)
        out[part][key] = torch.from_numpy(arr)
    return int(version), out
