"""Reading tensors out of a PyTorch ``.pth`` zip without running anything the pickle names.

A ``.pth`` file is a zip holding ``data.pkl`` (a pickle describing the objects) and raw tensor
storages under ``data/``. Unpickling runs whatever callables the pickle names, so this reader
resolves names itself: a short allow-list maps the few names a tensor file needs to inert
stand-ins written here (nothing from torch or the file is called), and any other name raises
:class:`UnsafePickleError` before anything is built.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TipsomalyError


class UnsafePickleError(TipsomalyError, ValueError):
    """The file names a callable outside the allow-list, or is not a PyTorch zip file."""


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": None,  # handled separately: numpy has no bfloat16
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


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


class _Reader(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.source = archive, prefix, source
        self.little_endian = True

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
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
            f"{self.source} names {module}.{name}, which a tensor file has no reason to call; "
            "refusing to read it"
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"{self.source}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"{self.source}: unexpected storage type {storage_type!r}")
        raw = self.archive.read(f"{self.prefix}data/{key}")
        if storage_type.name == "BFloat16Storage":
            halves = np.frombuffer(raw, dtype="<u2" if self.little_endian else ">u2")
            return (halves.astype(np.uint32) << 16).view(np.float32)[:numel]
        dtype = np.dtype(_STORAGE_DTYPES[storage_type.name])
        dtype = dtype.newbyteorder("<" if self.little_endian else ">")
        return np.frombuffer(raw, dtype=dtype)[:numel]

    def _rebuild_tensor(
        self, storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any
    ) -> np.ndarray:
        itemsize = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
        )
        return np.array(view, dtype=storage.dtype.newbyteorder("="))


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


def read_torch_file(path: str | os.PathLike) -> Any:
    """The object tree of a ``.pth`` zip file, tensors as numpy arrays, modules as dicts.

    Only plain containers and tensors are understood; a ParameterList/ParameterDict becomes
    the dict of its ``_parameters``. Anything else in the pickle raises UnsafePickleError.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafePickleError(
            f"{path} is not a PyTorch zip checkpoint ({exc}); legacy pickles are not read"
        ) from None
    with archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise UnsafePickleError(f"{path}: expected one data.pkl in the archive, found {pkl}")
        prefix = pkl[0][: -len("data.pkl")]
        reader = _Reader(archive.read(pkl[0]), archive, prefix, str(path))
        if f"{prefix}byteorder" in archive.namelist():
            reader.little_endian = archive.read(f"{prefix}byteorder").strip() != b"big"
        try:
            obj = reader.load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # malformed pickle, wrong arguments to a stand-in, ...
            raise UnsafePickleError(f"{path}: unreadable tensor file ({exc})") from None
    return _plain(obj)


def _plain(obj: Any) -> Any:
    if isinstance(obj, _Object):
        state = obj.state if isinstance(obj.state, dict) else {}
        return _plain(state.get("_parameters", state))
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj
