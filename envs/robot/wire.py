"""Self-describing messages for the remote robot: a JSON header frame followed by raw numpy buffers (ZeroMQ multipart).

    frame 0: UTF-8 JSON  {"v": 2, "op": "send_action", "id": 7, "session": "...", ...,
                          "arrays": [{"name": "action", "dtype": "float32", "shape": [4]}]}
    frame i: the C-order bytes of array i-1

Nothing is ever unpickled: dtypes come from a short allow-list (no object dtype), and every buffer's length must
equal prod(shape) * itemsize, or the message is refused with :class:`ProtocolError`. :func:`decode` checks the
frame count, the total size, the header size and every array descriptor against :class:`WireLimits` *before* it
parses the header or copies a buffer; NaN / Infinity / out-of-range numbers in the header are refused too.
:func:`parse_request` then checks every field of a request header (``op``, ``id``, ``session``, per-op fields).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from calql_robot.errors import UserError

PROTOCOL_VERSION = 2
ALLOWED_DTYPES = frozenset({"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float16",
                            "float32", "float64"})
MAX_HEADER_BYTES = 1 << 20
MAX_NDIM = 8
MAX_ID = (1 << 63) - 1
SESSION_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_./:-]{1,128}")
# op -> the header fields it may carry besides the common ones
OP_FIELDS: dict[str, frozenset[str]] = {
    "hello": frozenset({"version"}), "get_observation": frozenset(), "get_ee_position": frozenset(),
    "send_action": frozenset(), "home": frozenset(), "task_signal": frozenset(), "stop": frozenset(),
    "bye": frozenset(), "ping": frozenset(), "shutdown": frozenset(),
}
COMMON_FIELDS = frozenset({"v", "op", "id", "session"})


class ProtocolError(UserError):
    """A message that does not follow the wire format."""


@dataclass(frozen=True)
class WireLimits:
    """Bounds on one incoming message, checked before anything is parsed or copied.

    ``max_message_bytes`` bounds the sum of all frames (and, through ``zmq.MAXMSGSIZE``, each single frame at the
    socket, where libzmq drops the sender before buffering it); ``max_arrays`` bounds the number of arrays (frames
    after the header); ``max_header_bytes`` the JSON header frame.
    """

    max_message_bytes: int = 16 << 20
    max_arrays: int = 32
    max_header_bytes: int = 64 << 10

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_arrays", "max_header_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} is {value!r}; expected a whole number >= 1")
        if self.max_header_bytes > MAX_HEADER_BYTES:
            raise UserError(f"max_header_bytes is {self.max_header_bytes}; expected at most {MAX_HEADER_BYTES}")


DEFAULT_LIMITS = WireLimits()


@dataclass(frozen=True)
class Request:
    """A validated request header: ``op`` (one of :data:`OP_FIELDS`), ``id`` (0..2**63-1), ``session`` token,
    and the op's own ``fields`` (e.g. ``version`` for ``hello``)."""

    op: str
    id: int
    session: str
    fields: dict[str, Any]


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> list[bytes]:
    """Multipart frames for ``header`` (JSON-ready values) plus named arrays."""
    arrays = arrays or {}
    descriptors, buffers = [], []
    for name, value in arrays.items():
        arr = np.ascontiguousarray(value)
        if not NAME_PATTERN.fullmatch(name):
            raise ProtocolError(f"array name {name[:80]!r} cannot travel: expected 1-128 characters of letters, digits "
                                "and _ . / : -")
        if arr.ndim > MAX_NDIM:
            raise ProtocolError(f"array '{name}' has {arr.ndim} dimensions; the wire format carries at most {MAX_NDIM}")
        if arr.dtype.name not in ALLOWED_DTYPES:
            raise ProtocolError(f"array '{name}' has dtype {arr.dtype}, which the wire format does not carry; "
                                f"allowed: {', '.join(sorted(ALLOWED_DTYPES))}")
        descriptors.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
        buffers.append(arr.tobytes())
    head = dict(header, v=PROTOCOL_VERSION, arrays=descriptors)
    return [json.dumps(head, allow_nan=False).encode()] + buffers


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number the protocol accepts")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode(), parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise ProtocolError(f"header frame is not UTF-8 JSON the protocol accepts ({str(err)[:200]})") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a JSON object, got a {type(header).__name__}")
    return header


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _descriptor(desc: Any, index: int, limits: WireLimits) -> tuple[str, np.dtype, tuple[int, ...], int]:
    """(name, dtype, shape, byte size) of one array descriptor, every field checked."""
    if not isinstance(desc, dict) or set(desc) != {"name", "dtype", "shape"}:
        raise ProtocolError(f"array descriptor {index} must be an object with exactly name, dtype and shape; "
                            f"got {str(desc)[:200]}")
    name, dtype, shape = desc["name"], desc["dtype"], desc["shape"]
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ProtocolError(f"array descriptor {index}: name {str(name)[:80]!r} must be 1-128 characters of "
                            "letters, digits and _ . / : -")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"array '{name}': dtype {str(dtype)[:40]!r} not allowed; allowed: "
                            f"{', '.join(sorted(ALLOWED_DTYPES))}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_whole(s) and s >= 0 for s in shape):
        raise ProtocolError(f"array '{name}': shape {str(shape)[:80]} not allowed; expected a list of at most "
                            f"{MAX_NDIM} whole numbers >= 0")
    item = np.dtype(dtype)
    nbytes = math.prod(shape) * item.itemsize  # Python ints: no overflow
    if nbytes > limits.max_message_bytes:
        raise ProtocolError(f"array '{name}': {dtype}{shape} is {nbytes} bytes, more than max_message_bytes "
                            f"({limits.max_message_bytes})")
    return name, item, tuple(shape), nbytes


def decode(frames: Sequence[Any], limits: WireLimits = DEFAULT_LIMITS) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) from multipart frames (``bytes`` or ``zmq.Frame``); arrays are writable copies, made only
    after the whole message passed the checks."""
    if not frames:
        raise ProtocolError("empty message")
    if len(frames) - 1 > limits.max_arrays:
        raise ProtocolError(f"message has {len(frames) - 1} array frames, more than max_arrays ({limits.max_arrays})")
    views = [memoryview(frame) for frame in frames]
    total = sum(view.nbytes for view in views)
    if total > limits.max_message_bytes:
        raise ProtocolError(f"message of {total} bytes is larger than max_message_bytes ({limits.max_message_bytes})")
    if views[0].nbytes > limits.max_header_bytes:
        raise ProtocolError(f"header of {views[0].nbytes} bytes is larger than max_header_bytes "
                            f"({limits.max_header_bytes})")
    header = _parse_header(views[0].tobytes())
    descriptors = header.pop("arrays", [])
    if not isinstance(descriptors, list):
        raise ProtocolError(f"header field 'arrays' must be a list of array descriptors, got {str(descriptors)[:80]}")
    if len(descriptors) != len(views) - 1:
        raise ProtocolError(f"header lists {len(descriptors)} arrays but {len(views) - 1} buffers arrived")
    checked = []
    for index, (desc, view) in enumerate(zip(descriptors, views[1:])):
        name, item, shape, nbytes = _descriptor(desc, index, limits)
        if view.nbytes != nbytes:
            raise ProtocolError(f"array '{name}': {view.nbytes} bytes for {item.name}{list(shape)}, expected {nbytes}")
        if any(name == seen[0] for seen in checked):
            raise ProtocolError(f"array '{name}' appears twice in one message")
        checked.append((name, item, shape, view))
    arrays = {name: np.frombuffer(view, dtype=item).reshape(shape).copy() for name, item, shape, view in checked}
    return header, arrays


def parse_request(header: dict[str, Any]) -> Request:
    """Check every field of a request header (the ``arrays`` list already removed by :func:`decode`)."""
    op = header.get("op")
    if not isinstance(op, str) or op not in OP_FIELDS:
        raise ProtocolError(f"header field 'op' is {str(op)[:80]!r}; expected one of {', '.join(sorted(OP_FIELDS))}")
    req_id = header.get("id")
    if not _whole(req_id) or not 0 <= req_id <= MAX_ID:
        raise ProtocolError(f"header field 'id' is {str(req_id)[:80]!r}; expected a whole number 0..2**63-1")
    session = header.get("session")
    if not isinstance(session, str) or not SESSION_PATTERN.fullmatch(session):
        raise ProtocolError(f"header field 'session' is {str(session)[:80]!r}; expected 1-128 characters of "
                            "letters, digits and _ . : -")
    version = header.get("v", PROTOCOL_VERSION)
    if not _whole(version):
        raise ProtocolError(f"header field 'v' is {str(version)[:80]!r}; expected the protocol version (a number)")
    unknown = set(header) - COMMON_FIELDS - OP_FIELDS[op]
    if unknown:
        raise ProtocolError(f"request '{op}' has unknown header fields {sorted(unknown)[:10]}; it takes "
                            f"{sorted(COMMON_FIELDS | OP_FIELDS[op])} and 'arrays'")
    fields = {key: header[key] for key in OP_FIELDS[op] if key in header}
    return Request(op=op, id=req_id, session=session, fields=fields)


def prefixed(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{prefix/key: array}``, e.g. an observation as ``obs/agentview_rgb``."""
    return {f"{prefix}/{key}": value for key, value in arrays.items()}


def unprefixed(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`prefixed` (other arrays are left out)."""
    start = prefix + "/"
    return {key[len(start):]: value for key, value in arrays.items() if key.startswith(start)}
