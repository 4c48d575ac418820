"""Self-describing messages for the remote robot: a JSON header frame followed by raw numpy buffers (ZeroMQ multipart).

    frame 0: UTF-8 JSON  {"v": 1, "op": "send_action", "id": 7, "session": "...", ...,
                          "arrays": [{"name": "action", "dtype": "float32", "shape": [4]}]}
    frame i: the C-order bytes of array i-1

Nothing is ever unpickled: dtypes come from a short allow-list (no object dtype), and every buffer's length must
equal prod(shape) * itemsize, or the message is refused with :class:`ProtocolError`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from calql_robot.errors import UserError

PROTOCOL_VERSION = 1
ALLOWED_DTYPES = frozenset({"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float16",
                            "float32", "float64"})
MAX_HEADER_BYTES = 1 << 20


class ProtocolError(UserError):
    """A message that does not follow the wire format."""


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> list[bytes]:
    """Multipart frames for ``header`` (JSON-ready values) plus named arrays."""
    arrays = arrays or {}
    descriptors, buffers = [], []
    for name, value in arrays.items():
        arr = np.ascontiguousarray(value)
        if arr.dtype.name not in ALLOWED_DTYPES:
            raise ProtocolError(f"array '{name}' has dtype {arr.dtype}, which the wire format does not carry; "
                                f"allowed: {', '.join(sorted(ALLOWED_DTYPES))}")
        descriptors.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
        buffers.append(arr.tobytes())
    head = dict(header, v=PROTOCOL_VERSION, arrays=descriptors)
    return [json.dumps(head, allow_nan=False).encode()] + buffers


def decode(frames: list[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) from multipart frames; arrays are writable copies."""
    if not frames:
        raise ProtocolError("empty message")
    if len(frames[0]) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(frames[0])} bytes is larger than {MAX_HEADER_BYTES}")
    try:
        header = json.loads(frames[0].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"header frame is not UTF-8 JSON ({err})") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays", []), list):
        raise ProtocolError("header must be a JSON object with an 'arrays' list")
    descriptors = header.pop("arrays", [])
    if len(descriptors) != len(frames) - 1:
        raise ProtocolError(f"header lists {len(descriptors)} arrays but {len(frames) - 1} buffers arrived")
    arrays: dict[str, np.ndarray] = {}
    for desc, buf in zip(descriptors, frames[1:]):
        try:
            name, dtype, shape = str(desc["name"]), str(desc["dtype"]), [int(s) for s in desc["shape"]]
        except (KeyError, TypeError, ValueError):
            raise ProtocolError(f"array descriptor {desc!r} needs name, dtype and shape") from None
        if dtype not in ALLOWED_DTYPES or any(s < 0 for s in shape):
            raise ProtocolError(f"array '{name}': dtype {dtype!r} / shape {shape} not allowed")
        expected = math.prod(shape) * np.dtype(dtype).itemsize
        if len(buf) != expected:
            raise ProtocolError(f"array '{name}': {len(buf)} bytes for {dtype}{shape}, expected {expected}")
        arrays[name] = np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape).copy()
    return header, arrays


def prefixed(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{prefix/key: array}``, e.g. an observation as ``obs/agentview_rgb``."""
    return {f"{prefix}/{key}": value for key, value in arrays.items()}


def unprefixed(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`prefixed` (other arrays are left out)."""
    start = prefix + "/"
    return {key[len(start):]: value for key, value in arrays.items() if key.startswith(start)}
