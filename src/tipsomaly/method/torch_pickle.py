"""Reading tensors out of a PyTorch ``.pth`` zip without running anything the pickle names.

A ``.pth`` file is a zip holding ``data.pkl`` (a pickle describing the objects) and raw tensor
storages under ``data/``. Unpickling runs whatever callables the pickle names, so this reader
resolves names itself: a short allow-list maps the few names a tensor file needs to inert
stand-ins written here (nothing from torch or the file is called), and any other name raises
:class:`UnsafePickleError` before anything is built.

Nothing the file declares is trusted: every storage's declared element count must equal its
bytes, and every tensor's size, stride and offset must stay inside its storage (checked with
Python's unbounded integers before numpy sees a stride), so a crafted file can only be refused,
never make the reader touch memory outside the bytes it read.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TipsomalyError, one_line

logger = logging.getLogger(__name__)

# Limits on what a prompt file may ask for (the authors' files hold 2 × 8 × 1024 floats).
MAX_MEMBER_BYTES = 1 << 30  # one storage or data.pkl, uncompressed
MAX_ELEMENTS = 1 << 28  # elements of one rebuilt tensor
MAX_DIMS = 32
MAX_DEPTH = 200  # nesting of containers in the pickle


class UnsafePickleError(TipsomalyError, ValueError):
    """The file names a callable outside the allow-list, is not a PyTorch zip file, or holds a
    tensor that does not fit its storage."""


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,  # raw halves of a float32: widened in _Storage.values
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.uint8,  # any non-zero byte is True
}


class _Bad(ValueError):
    """Raised inside the reader; :func:`read_torch_file` turns it into one UnsafePickleError."""


def _clip(value: object, limit: int = 60) -> str:
    """A short, one-line, printable rendering of something read from the file."""
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


class _Storage:
    """The raw elements of one storage, a 1-D numpy array of exactly ``numel`` elements."""

    def __init__(self, name: str, values: np.ndarray) -> None:
        self.name, self.values = name, values

    @property
    def numel(self) -> int:
        return int(self.values.shape[0])


class _Object:
    """Stand-in for any allowed class (e.g. ``ParameterList``): only records its state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _ordered_dict(*args: Any) -> dict:
    return dict(*args)


def _empty_set(*args: Any) -> set:
    return set(*args)


def _int(value: Any, what: str) -> int:
    """A non-negative Python int (bools and other types refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Bad(f"{what} must be a non-negative integer, got {_clip(value)}")
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_DIMS:
        raise _Bad(f"{what} must be a tuple of at most {MAX_DIMS} integers, got {_clip(value)}")
    return tuple(_int(v, what) for v in value)


def rebuild_strided(
    storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> np.ndarray:
    """A copy of the strided view ``(offset, size, stride)`` (in elements) of a 1-D ``storage``.

    Raises ``ValueError`` unless every element the view reaches lies inside ``storage``: the
    largest index ``offset + Σ (size_i - 1) · stride_i`` is computed with Python integers (no
    overflow) and must be below ``storage.shape[0]``. Dimensions of size 1 ignore their stride.
    """
    if storage.ndim != 1:
        raise ValueError("storage must be one-dimensional")
    offset = _int(offset, "storage offset")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise ValueError(f"size {size} and stride {stride} have different lengths")
    count = 1
    for n in size:
        count *= n
    if count > MAX_ELEMENTS:
        raise ValueError(f"a tensor of size {size} is too large ({count} elements)")
    if count == 0:
        return np.empty(size, dtype=storage.dtype.newbyteorder("="))
    stride = tuple(s if n > 1 else 0 for n, s in zip(size, stride, strict=True))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.shape[0]:
        raise ValueError(
            f"size {size}, stride {stride} and offset {offset} reach element {last} of a "
            f"storage of {storage.shape[0]}"
        )
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view, dtype=storage.dtype.newbyteorder("="))


class _Reader(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.little_endian = True
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("collections", "OrderedDict"): _ordered_dict,
            ("builtins", "set"): _empty_set,
            ("__builtin__", "set"): _empty_set,
            ("torch.nn.modules.container", "ParameterList"): _Object,
            ("torch.nn.modules.container", "ParameterDict"): _Object,
            ("torch.nn.parameter", "Parameter"): _Object,
        }
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise UnsafePickleError(
            f"names {_clip(module)}.{_clip(name)}, which a tensor file has no reason to call; "
            "refusing to read it"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Bad(f"unexpected persistent id {_clip(pid)}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise _Bad(f"unexpected storage type {_clip(storage_type)}")
        if not isinstance(key, str):
            raise _Bad(f"unexpected storage key {_clip(key)}")
        numel = _int(numel, f"storage {_clip(key)}: element count")
        cached = self.storages.get(key)
        if cached is not None:
            if cached.name != storage_type.name or cached.numel != numel:
                raise _Bad(f"storage {_clip(key)} is declared twice differently")
            return cached
        raw = _read_member(self.archive, f"{self.prefix}data/{key}")
        dtype = np.dtype(_STORAGE_DTYPES[storage_type.name])
        if len(raw) != numel * dtype.itemsize:
            raise _Bad(
                f"storage {_clip(key)} declares {numel} {storage_type.name} elements "
                f"({numel * dtype.itemsize} bytes) but holds {len(raw)} bytes"
            )
        values = np.frombuffer(raw, dtype=dtype.newbyteorder("<" if self.little_endian else ">"))
        storage = _Storage(storage_type.name, values)
        self.storages[key] = storage
        return storage


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> np.ndarray:
    if not isinstance(storage, _Storage):
        raise _Bad(f"a tensor is rebuilt from {type(storage).__name__}, not from a storage")
    try:
        array = rebuild_strided(storage.values, offset, size, stride)
    except ValueError as exc:
        raise _Bad(f"tensor does not fit its storage: {exc}") from None
    if storage.name == "BFloat16Storage":
        return (array.astype(np.uint32) << 16).view(np.float32)
    if storage.name == "BoolStorage":
        return array != 0
    return array


def _rebuild_parameter(data: Any, *_: Any) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        raise _Bad(f"a parameter wraps {type(data).__name__}, not a tensor")
    return data


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise _Bad(f"the archive has no {_clip(name)}") from None
    if info.file_size > MAX_MEMBER_BYTES:
        raise _Bad(f"{_clip(name)} is too large ({info.file_size} bytes)")
    return archive.read(info)


def read_torch_file(path: str | os.PathLike) -> Any:
    """The object tree of a ``.pth`` zip file, tensors as numpy arrays, modules as dicts.

    Only plain containers and tensors are understood; a ParameterList/ParameterDict becomes
    the dict of its ``_parameters``. Anything else in the pickle, a malformed archive, or a
    tensor reaching outside its storage raises :class:`UnsafePickleError` naming ``path``.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except Exception as exc:  # noqa: BLE001 - BadZipFile, OSError, struct/EOF errors, ...
        raise UnsafePickleError(
            f"{path} is not a PyTorch zip checkpoint ({one_line(exc)}); legacy pickles are not read"
        ) from None
    try:
        with archive:
            return _plain(_load(archive), 0, {})
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except RecursionError:
        raise UnsafePickleError(f"{path}: unreadable tensor file (nested too deeply)") from None
    except Exception as exc:  # noqa: BLE001 - any failure on untrusted bytes is the file's
        raise UnsafePickleError(f"{path}: unreadable tensor file ({one_line(exc)})") from None


def _load(archive: zipfile.ZipFile) -> Any:
    pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pkl) != 1:
        raise _Bad(f"expected one data.pkl in the archive, found {len(pkl)}")
    prefix = pkl[0][: -len("data.pkl")]
    reader = _Reader(_read_member(archive, pkl[0]), archive, prefix)
    if f"{prefix}byteorder" in archive.namelist():
        order = _read_member(archive, f"{prefix}byteorder").strip()
        if order not in (b"little", b"big"):
            raise _Bad(f"unknown byte order {_clip(order)}")
        reader.little_endian = order == b"little"
    return reader.load()


def _plain(obj: Any, depth: int, done: dict[int, Any]) -> Any:
    """Stand-ins replaced by plain containers; ``done`` (by ``id``) converts a shared object once,
    so a pickle of doubly referenced lists cannot blow up exponentially."""
    if depth > MAX_DEPTH:
        raise _Bad("containers nested too deeply (or a container holds itself)")
    if isinstance(obj, _Storage):
        raise _Bad("a bare storage where a tensor was expected")
    if not isinstance(obj, (_Object, dict, list, tuple)):
        return obj
    if id(obj) in done:
        return done[id(obj)]
    if isinstance(obj, _Object):
        state = obj.state if isinstance(obj.state, dict) else {}
        result = _plain(state.get("_parameters", state), depth + 1, done)
    elif isinstance(obj, dict):
        result = {k: _plain(v, depth + 1, done) for k, v in obj.items()}
    else:
        result = type(obj)(_plain(v, depth + 1, done) for v in obj)
    done[id(obj)] = result
    return result
