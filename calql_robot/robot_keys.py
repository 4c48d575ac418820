"""Make the CurveZMQ keys of the robot link: ``python -m calql_robot.robot_keys keys_dir=robot_keys clients=[learner]``.

On the robot PC this writes (every file mode 0600, folders 0700; layout in :mod:`calql_robot.envs.robot.auth`)::

    robot_keys/server.key, server.key_secret     the server's key pair (made once, then reused)
    robot_keys/clients/learner.key_secret        learner 'learner''s key pair: move it to the learner
    robot_keys/allowed_clients/learner.key       ... and its public key on the server's allow-list

``revoke=[name]`` takes a learner off the allow-list (restart the server afterwards). Everything is checked before
the first file is written: an existing client of the same name needs ``overwrite=true``, an existing server key
pair is kept unless ``new_server_key=true`` (every learner then needs the new ``server.key``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from omegaconf import DictConfig

from calql_robot.app import calql_app
from calql_robot.errors import UserError


def _flag(cfg: DictConfig, key: str) -> bool:
    value = cfg.get(key)
    if not isinstance(value, bool):
        raise UserError(f"{key} is {value!r}; expected true or false")
    return value


def _names(cfg: DictConfig, key: str) -> list[str]:
    from calql_robot.envs.robot import auth

    value = cfg.get(key)
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise UserError(f"{key} is {value!r}; expected a list of names, e.g. {key}=[learner]")
    return auth.check_names(list(value), key)


def _key_root(cfg: DictConfig) -> Path:
    value = cfg.get("keys_dir")
    if not isinstance(value, str) or not value:
        raise UserError(f"keys_dir is {value!r}; expected the folder for the keys, e.g. keys_dir=robot_keys")
    root = Path(value).expanduser()
    if root.exists():
        info = root.stat()
        if not stat.S_ISDIR(info.st_mode):
            raise UserError(f"keys_dir is {value!r}, which exists and is not a folder")
        if os.name == "posix" and info.st_mode & 0o022:
            raise UserError(f"keys_dir {root} has mode {stat.S_IMODE(info.st_mode):04o}: group or others may change "
                            f"files in it; expected 0700 (run `chmod 700 {root}`) or choose another keys_dir=")
    return root


def plan_keys(cfg: DictConfig) -> tuple[Path, bool, list[str], list[str]]:
    """(root, make a server pair?, clients to make, clients to revoke), after checking every conflict."""
    from calql_robot.envs.robot import auth

    root = _key_root(cfg)
    clients, revoke = _names(cfg, "clients"), _names(cfg, "revoke")
    new_server, overwrite = _flag(cfg, "new_server_key"), _flag(cfg, "overwrite")
    both = sorted(set(clients) & set(revoke))
    if both:
        raise UserError(f"clients and revoke both name {both}; a learner is either added or revoked")
    server_files = [root / auth.SERVER_PUBLIC, root / auth.SERVER_SECRET]
    present = [path.exists() for path in server_files]
    if all(present) and not new_server:
        auth.read_key_file(server_files[1], need_secret=True)  # a damaged pair is reported now, not at serve time
    elif any(present) and not new_server:
        missing = server_files[present.index(False)]
        raise UserError(f"{missing} is missing but the other half of the server key pair exists; make a new pair "
                        "with new_server_key=true (every learner then needs the new server.key)")
    for name in clients:
        existing = [p for p in (root / auth.CLIENTS_DIR / f"{name}.key_secret",
                                root / auth.ALLOWED_DIR / f"{name}.key") if p.exists()]
        if existing and not overwrite:
            raise UserError(f"client '{name}' already has {existing[0]}; choose another name or replace its keys "
                            "with overwrite=true")
    for name in revoke:
        if not (root / auth.ALLOWED_DIR / f"{name}.key").exists():
            raise UserError(f"revoke names '{name}', but {root / auth.ALLOWED_DIR / (name + '.key')} does not exist")
    return root, new_server or not all(present), clients, revoke


def _folder(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_keys(root: Path, make_server: bool, clients: list[str], revoke: list[str]) -> list[str]:
    """Write the planned key files; returns the lines to print."""
    import zmq

    from calql_robot.envs.robot import auth

    _folder(root)
    _folder(root / auth.ALLOWED_DIR)
    lines = []
    if make_server:
        public, secret = zmq.curve_keypair()
        auth.write_private_file(root / auth.SERVER_SECRET, auth.key_file_text("server", public, secret))
        auth.write_private_file(root / auth.SERVER_PUBLIC, auth.key_file_text("server", public, None))
        lines.append(f"server key pair: {root / auth.SERVER_SECRET} (stays here), public {root / auth.SERVER_PUBLIC}")
    if clients:
        _folder(root / auth.CLIENTS_DIR)
    for name in clients:
        public, secret = zmq.curve_keypair()
        secret_file = root / auth.CLIENTS_DIR / f"{name}.key_secret"
        auth.write_private_file(secret_file, auth.key_file_text(name, public, secret))
        auth.write_private_file(root / auth.ALLOWED_DIR / f"{name}.key", auth.key_file_text(name, public, None))
        lines.append(f"learner '{name}': {secret_file} (move it to that learner), allow-listed in "
                     f"{root / auth.ALLOWED_DIR}")
    for name in revoke:
        (root / auth.ALLOWED_DIR / f"{name}.key").unlink()
        (root / auth.CLIENTS_DIR / f"{name}.key_secret").unlink(missing_ok=True)
        lines.append(f"learner '{name}' revoked (restart robot_server to apply)")
    for name in clients:
        lines.append(f"next: scp -p {root / auth.SERVER_PUBLIC} {root / auth.CLIENTS_DIR / (name + '.key_secret')} "
                     f"<{name}-host>:   then delete the copy here; serve with keys_dir={root}")
    return lines


@calql_app("robot_keys")
def main(cfg: DictConfig) -> None:
    plan = plan_keys(cfg)
    for line in write_keys(*plan):
        print(line)


if __name__ == "__main__":
    main()
