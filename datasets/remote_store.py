"""Dataset stores at a URL (``s3://bucket/store.zarr`` or any other fsspec URL), opened read-only.

:func:`open_remote` gives the two things the reader needs for a store at a URL:

- a :class:`RemotePath`, a small read-only stand-in for :class:`pathlib.Path` (``/``, ``exists``, ``is_file``,
  ``is_dir``, ``stat().st_size``, ``iterdir``, ``rglob("*")``) over ONE listing of every object under the store's
  root, taken on first use, so the structural and integrity checks of
  :mod:`~calql_robot.datasets.store_validation` cost one (paginated) LIST request instead of one request per chunk
  file; ``str()`` of it is the URL, which every error message names;
- a read-only zarr store (:class:`zarr.storage.FsspecStore` wrapped in :class:`CountingStore`, which counts the
  requests and bytes read) for the arrays themselves.

Credentials and endpoints are fsspec storage options (``data.storage_options`` of the training apps), passed to the
backend as they are: for S3 (s3fs) e.g. ``{endpoint_url: http://host:9000, key: ..., secret: ...}``, ``{anon: true}``
for a public bucket, or none at all and the usual ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_ENDPOINT_URL`` / ``~/.aws`` settings. Nothing is ever written to a store at a URL.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, WrapperStore

from calql_robot.errors import UserError

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")
#: schemes whose backend comes with an extra of calql_robot
_EXTRAS = {"s3": "s3", "s3a": "s3"}
#: options the array reads get unless the user sets them: s3fs's default (10) makes every whole-object read a HEAD
#: (for the size, to split reads of objects > 50 MiB) plus a GET; chunk files of this format are far smaller
_READ_DEFAULTS = {"s3": {"max_concurrency": 1}, "s3a": {"max_concurrency": 1}}


def is_url(location: Any) -> bool:
    """Whether ``location`` is a URL with a scheme (``s3://...``) rather than a local path (``file://`` is local)."""
    match = _URL.match(str(location))
    return match is not None and match.group(1).lower() not in ("file", "local")


def local_path_text(location: Any) -> str:
    """``location`` as a local path string (a ``file://`` URL loses its scheme)."""
    text = str(location)
    match = _URL.match(text)
    return text[len(match.group(0)):] if match is not None and not is_url(text) else text


@dataclass(frozen=True)
class _Stat:
    st_size: int


class _Listing:
    """Every object under a store's root (relative key -> size in bytes), listed once on first use."""

    def __init__(self, fs: Any, root: str, url: str) -> None:
        self.fs, self.root, self.url = fs, root.rstrip("/"), url.rstrip("/")
        self._files: dict[str, int] | None = None
        self._dirs: set[str] = set()
        self.root_is_file = False
        self._lock = threading.Lock()

    def files(self) -> dict[str, int]:
        with self._lock:
            if self._files is None:
                self._files = self._list()
            return self._files

    def dirs(self) -> set[str]:
        self.files()
        return self._dirs

    def _list(self) -> dict[str, int]:
        try:
            self.fs.invalidate_cache(self.root)  # fsspec shares instances: never answer from an older listing
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:  # no such bucket
            found = {}
        except Exception as err:  # credentials, endpoint, permissions: the backend's own exception types
            raise _listing_error(self.url, err) from None
        files: dict[str, int] = {}
        prefix = self.root + "/"
        for full, info in found.items():
            name = str(full).rstrip("/")
            if name == self.root and info.get("type") != "directory":
                self.root_is_file = True
            elif name.startswith(prefix) and info.get("type", "file") != "directory":
                rel = name[len(prefix):]
                files[rel] = int(info.get("size") or 0)
                parts = rel.split("/")
                self._dirs.update("/".join(parts[:i]) for i in range(len(parts)))
        return files


def _listing_error(url: str, err: BaseException) -> UserError:
    if isinstance(err, TypeError):  # s3fs passes unknown options on to the session it creates on first use
        return UserError(f"dataset {url}: the storage options were refused ({err}); see data.storage_options")
    return UserError(
        f"dataset {url}: cannot be listed ({type(err).__name__}: {err}); check the URL and the credentials / "
        "endpoint (data.storage_options, e.g. {endpoint_url: 'http://HOST:PORT'} for an S3-compatible server, or "
        "the AWS_* environment variables)"
    )


class RemotePath:
    """A file or folder inside a store at a URL, read from its store's one listing (see the module docstring)."""

    def __init__(self, listing: _Listing, rel: str = "") -> None:
        self._listing = listing
        self._rel = rel.strip("/")

    def __truediv__(self, other: Any) -> RemotePath:
        extra = str(other).strip("/")
        return RemotePath(self._listing, f"{self._rel}/{extra}" if self._rel and extra else self._rel or extra)

    def __str__(self) -> str:
        return f"{self._listing.url}/{self._rel}" if self._rel else self._listing.url

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def name(self) -> str:
        return (self._rel or self._listing.url).rsplit("/", 1)[-1]

    def expanduser(self) -> RemotePath:
        return self

    def resolve(self) -> RemotePath:
        return self

    def is_file(self) -> bool:
        if not self._rel:
            self._listing.files()
            return self._listing.root_is_file
        return self._rel in self._listing.files()

    def is_dir(self) -> bool:
        return self._rel in self._listing.dirs() if self._rel else bool(self._listing.files())

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def stat(self) -> _Stat:
        """``st_size`` of a file (0 for a folder); FileNotFoundError if there is neither."""
        size = self._listing.files().get(self._rel)
        if size is not None:
            return _Stat(size)
        if self.exists():
            return _Stat(0)
        raise FileNotFoundError(str(self))

    def iterdir(self) -> Iterator[RemotePath]:
        """The files and folders directly inside this folder (FileNotFoundError / NotADirectoryError otherwise)."""
        if not self.is_dir():
            raise NotADirectoryError(str(self)) if self.is_file() else FileNotFoundError(str(self))
        prefix = f"{self._rel}/" if self._rel else ""
        names = {key[len(prefix):].split("/", 1)[0] for key in self._listing.files() if key.startswith(prefix)}
        return iter([self / name for name in sorted(names)])

    def rglob(self, pattern: str) -> Iterator[RemotePath]:
        """Every file and folder below this folder; only the pattern ``*`` is supported."""
        if pattern != "*":
            raise ValueError(f"RemotePath.rglob supports only '*', got {pattern!r}")
        prefix = f"{self._rel}/" if self._rel else ""
        keys = set(self._listing.files()) | self._listing.dirs()
        return iter([RemotePath(self._listing, key) for key in sorted(keys) if key and key.startswith(prefix)])


class CountingStore(WrapperStore[FsspecStore]):
    """A read-only zarr store that counts what is fetched: :attr:`requests` and :attr:`bytes_read`."""

    def __init__(self, store: FsspecStore) -> None:
        super().__init__(store)
        self.requests = 0
        self.bytes_read = 0
        self._count_lock = threading.Lock()

    def _count(self, buffers: list[Buffer | None]) -> None:
        with self._count_lock:
            self.requests += len(buffers)
            self.bytes_read += sum(len(b) for b in buffers if b is not None)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        value = await self._store.get(key, prototype, byte_range)
        self._count([value])
        return value

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Any) -> list[Buffer | None]:
        values = await self._store.get_partial_values(prototype, key_ranges)
        self._count(list(values))
        return values


def _backend_error(url: str, err: BaseException) -> UserError:
    scheme = url.split("://", 1)[0].lower()
    extra = _EXTRAS.get(scheme)
    hint = (f"pip install 'calql_robot[{extra}]' (it brings s3fs), or pip install s3fs" if extra
            else "install the package the backend names above")
    return UserError(f"dataset {url}: reading {scheme}:// URLs needs an fsspec backend that is not installed "
                     f"({err}); {hint}")


def open_remote(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[RemotePath, CountingStore]:
    """The store root at ``url`` as a :class:`RemotePath` and a read-only zarr store over it (nothing is read yet).

    ``storage_options`` go to the fsspec backend (see the module docstring). An unknown scheme, a backend that is
    not installed or options the backend refuses raise UserError naming the URL.
    """
    from fsspec.core import url_to_fs

    url = str(url).rstrip("/")
    opts = dict(storage_options or {})
    try:
        fs, root = url_to_fs(url, **opts)
        read_opts = {**_READ_DEFAULTS.get(url.split("://", 1)[0].lower(), {}), **opts}
        zstore = FsspecStore.from_url(url, storage_options=read_opts, read_only=True)
    except ImportError as err:
        raise _backend_error(url, err) from None
    except ValueError as err:
        if "not known" in str(err).lower():
            raise UserError(f"dataset {url}: the URL scheme is not one fsspec knows ({err}); expected a local path "
                            "or a URL such as s3://bucket/store.zarr") from None
        raise UserError(f"dataset {url}: the storage options {sorted(opts)} were refused ({err}); see "
                        "data.storage_options") from None
    except TypeError as err:
        raise UserError(f"dataset {url}: the storage options {sorted(opts)} were refused ({err}); see "
                        "data.storage_options") from None
    return RemotePath(_Listing(fs, root, url)), CountingStore(zstore)


def exists(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether an object or a folder is stored at ``url`` (for S3 a HEAD and a LIST of one key, not a full listing)."""
    listing = open_remote(url, storage_options)[0]._listing
    try:
        return bool(listing.fs.exists(listing.root))
    except Exception as err:
        raise _listing_error(listing.url, err) from None
