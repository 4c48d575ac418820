"""Keys and transport policy of the robot link: CurveZMQ key files, the client allow-list, and where plain text is
allowed.

A key folder made by ``python -m calql_robot.robot_keys keys_dir=KEYS clients=[learner]`` holds::

    KEYS/server.key                   the server's public key        (copy to every learner)
    KEYS/server.key_secret            the server's key pair          (stays on the robot PC)
    KEYS/allowed_clients/NAME.key     the allow-list: public keys of the learners that may connect
    KEYS/clients/NAME.key_secret      learner NAME's key pair        (move it to that learner, then delete it here)

Files use ZeroMQ's certificate format (``zmq.auth.load_certificate`` reads them) and are written with mode 0600;
any key file that group or others may read or write is refused, as is an allow-list folder they may write to.
The server runs a ZAP authenticator (:func:`start_authenticator`): a client whose public key is not on the
allow-list fails the CURVE handshake, so none of its messages reaches the server.

Plain text (no keys) is allowed only on a loopback address, or with an explicit ``insecure=true`` that prints a
warning (:func:`check_plaintext_allowed`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from calql_robot.errors import UserError

SERVER_PUBLIC = "server.key"
SERVER_SECRET = "server.key_secret"
ALLOWED_DIR = "allowed_clients"
CLIENTS_DIR = "clients"
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEY_LINE = re.compile(r'^\s*(public-key|secret-key)\s*=\s*"([^"]*)"\s*$')
_ADDRESS = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^:/\s]+):(\d{1,5})")


@dataclass(frozen=True)
class ServerKeys:
    """The server's key pair and the allow-list (z85 public key -> client name)."""

    public: bytes
    secret: bytes
    allowed: dict[bytes, str]

    @classmethod
    def load(cls, keys_dir: str | os.PathLike[str], config_key: str = "keys_dir") -> ServerKeys:
        """Read ``keys_dir/server.key_secret`` and ``keys_dir/allowed_clients/*.key``, checking modes and format."""
        root = Path(keys_dir).expanduser()
        if not root.is_dir():
            raise UserError(f"{config_key} is {str(keys_dir)!r}, which is not a folder; create the keys with "
                            f"`python -m calql_robot.robot_keys keys_dir={keys_dir} clients=[learner]`")
        public, secret = read_key_file(root / SERVER_SECRET, need_secret=True)
        allowed = load_allow_list(root / ALLOWED_DIR)
        return cls(public=public, secret=secret, allowed=allowed)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ClientKeys:
    """What a learner needs: the server's public key and its own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, server_key: str | os.PathLike[str], client_key: str | os.PathLike[str]) -> ClientKeys:
        """Read the server's public ``server.key`` and this learner's ``NAME.key_secret``."""
        server_public, _ = read_key_file(Path(server_key).expanduser(), need_secret=False)
        public, secret = read_key_file(Path(client_key).expanduser(), need_secret=True)
        return cls(server_public=server_public, public=public, secret=secret)  # type: ignore[arg-type]


def check_private(path: Path, what: str = "key file") -> None:
    """Refuse ``path`` unless it is a regular file that neither group nor others may read or write (mode 0600)."""
    try:
        info = path.stat()
    except OSError as err:
        raise UserError(f"{what} {path} cannot be read ({err.strerror}); create the keys with "
                        "`python -m calql_robot.robot_keys`") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{what} {path} is not a regular file")
    if os.name == "posix" and info.st_mode & 0o077:
        raise UserError(f"{what} {path} has mode {stat.S_IMODE(info.st_mode):04o}: group or others may read or "
                        f"change it; expected 0600 (run `chmod 600 {path}`, and make a new key pair if others may "
                        "have read a secret key)")


def _z85_key(text: str, path: Path, field: str) -> bytes:
    try:
        if len(text) != 40 or len(z85.decode(text.encode("ascii"))) != 32:
            raise ValueError
    except (ValueError, UnicodeEncodeError, KeyError):
        raise UserError(f"key file {path}: {field} is not a 40-character Z85 CURVE key; the file is damaged, make "
                        "a new one with `python -m calql_robot.robot_keys`") from None
    return text.encode("ascii")


def read_key_file(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    """(public key, secret key or None) from a certificate file, after :func:`check_private`."""
    check_private(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"key file {path} cannot be read as text ({err})") from None
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _KEY_LINE.match(line)
        if match and not line.lstrip().startswith("#"):
            found.setdefault(match.group(1), match.group(2))
    if "public-key" not in found:
        raise UserError(f"key file {path} has no public-key line; expected a file written by "
                        "`python -m calql_robot.robot_keys`")
    public = _z85_key(found["public-key"], path, "public-key")
    secret = _z85_key(found["secret-key"], path, "secret-key") if "secret-key" in found else None
    if need_secret and secret is None:
        raise UserError(f"key file {path} holds only a public key; expected the secret key file (NAME.key_secret)")
    if secret is not None and zmq.curve_public(secret) != public:
        raise UserError(f"key file {path}: its public-key does not belong to its secret-key; the file is damaged")
    return public, secret


def load_allow_list(folder: Path) -> dict[bytes, str]:
    """{z85 public key: client name} from ``folder/*.key``; the folder must exist, be closed to group/other writes
    and hold at least one key."""
    try:
        info = folder.stat()
    except OSError:
        raise UserError(f"allow-list folder {folder} does not exist; add a learner with "
                        f"`python -m calql_robot.robot_keys keys_dir={folder.parent} clients=[learner]`") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(f"allow-list {folder} is not a folder")
    if os.name == "posix" and info.st_mode & 0o022:
        raise UserError(f"allow-list folder {folder} has mode {stat.S_IMODE(info.st_mode):04o}: group or others may "
                        f"add keys to it; expected 0700 (run `chmod 700 {folder}`)")
    allowed: dict[bytes, str] = {}
    for path in sorted(folder.glob("*.key")):
        public, _ = read_key_file(path, need_secret=False)
        allowed[public] = path.stem
    if not allowed:
        raise UserError(f"allow-list folder {folder} holds no *.key file, so no learner could connect; add one with "
                        f"`python -m calql_robot.robot_keys keys_dir={folder.parent} clients=[learner]`")
    return allowed


class _AllowList:
    """ZAP credentials provider: accept exactly the allow-listed public keys."""

    def __init__(self, allowed: dict[bytes, str]) -> None:
        self.allowed = dict(allowed)
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.allowed
        self.denied += int(not ok)
        return ok


class _NamedAuthenticator(ThreadAuthenticator):
    """ThreadAuthenticator whose User-Id (frame metadata) is the client's name in the allow-list."""

    def __init__(self, context: zmq.Context, allowed: dict[bytes, str]) -> None:
        super().__init__(context)
        self.names = dict(allowed)

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.names.get(z85.encode(client_public_key), "?")


def start_authenticator(ctx: zmq.Context, keys: ServerKeys) -> ThreadAuthenticator:
    """Start a ZAP handler on ``ctx`` admitting only ``keys.allowed``; call before binding the server socket."""
    authenticator = _NamedAuthenticator(ctx, keys.allowed)
    authenticator.start()
    authenticator.configure_curve_callback("*", _AllowList(keys.allowed))
    return authenticator


def make_curve_server(sock: zmq.Socket, keys: ServerKeys) -> None:
    """Make ``sock`` (before bind) a CURVE server with the server's key pair."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


def make_curve_client(sock: zmq.Socket, keys: ClientKeys) -> None:
    """Make ``sock`` (before connect) a CURVE client of the server whose public key is ``keys.server_public``."""
    sock.curve_serverkey = keys.server_public
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret


def parse_tcp_address(address: str, config_key: str = "address") -> tuple[str, int]:
    """(host, port) of ``tcp://HOST:PORT``; a UserError naming ``config_key`` otherwise."""
    match = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
    port = int(match.group(2)) if match else 0
    if not match or not 0 < port < 65536:
        raise UserError(f"{config_key} is {str(address)[:120]!r}; expected tcp://HOST:PORT with a port 1-65535, "
                        "e.g. tcp://127.0.0.1:5555")
    return match.group(1).strip("[]"), port


def check_host(host: object, config_key: str = "host") -> str:
    """``host`` if it is an IP address, ``*``, ``localhost`` or a plausible host name; UserError otherwise."""
    if not isinstance(host, str) or not host:
        raise UserError(f"{config_key} is {host!r}; expected an IP address such as 127.0.0.1 or 0.0.0.0")
    if host in ("*", "localhost"):
        return host
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host) or not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", host):
        raise UserError(f"{config_key} is {host!r}, which is not an IP address (each of the four numbers is 0-255) "
                        "or a host name; expected e.g. 127.0.0.1 (this machine only) or the robot PC's LAN address")
    return host


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost (addresses no other machine can reach)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext_allowed(host: str, insecure: bool, keys_hint: str, who: str) -> None:
    """Refuse plain text on a non-loopback ``host`` unless ``insecure``; with ``insecure`` print a warning."""
    if is_loopback(host):
        return
    if not insecure:
        raise UserError(f"{who}: {host} is reachable from other machines, and without keys anyone who can reach it "
                        f"could drive the robot; give {keys_hint} (make them with `python -m calql_robot.robot_keys`, "
                        "docs/robot_bringup.md), use host 127.0.0.1, or accept the risk with insecure=true")
    print(f"WARNING: {who} runs WITHOUT authentication or encryption on {host} (insecure=true): anyone who can "
          "reach this address can drive the robot and read its cameras", file=sys.stderr, flush=True)


def key_file_text(name: str, public: bytes, secret: bytes | None) -> str:
    """A certificate (ZeroMQ's format) for ``name``: public key only, or the key pair when ``secret`` is given."""
    role = "secret key pair: keep it on the machine that uses it" if secret else "public key: may be shared"
    lines = [f"#   calql_robot CURVE {role} (mode 0600; python -m calql_robot.robot_keys)", "metadata",
             f'    name = "{name}"', "curve", f'    public-key = "{public.decode("ascii")}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte on (temporary file + fsync + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)  # exactly 0600 whatever the umask
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_names(names: Iterable[object], config_key: str) -> list[str]:
    """Client names for key files: 1-64 letters, digits, ``_ . -``, not ``server``."""
    out = []
    for name in names:
        if not isinstance(name, str) or not CLIENT_NAME.fullmatch(name) or name == "server":
            raise UserError(f"{config_key} holds {name!r}; expected names of 1-64 letters, digits, _ . - (not "
                            "'server'), e.g. clients=[learner]")
        out.append(name)
    if len(set(out)) != len(out):
        raise UserError(f"{config_key} names a client twice: {out}")
    return out
