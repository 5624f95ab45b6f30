"""The ``.pth`` reader and the safetensors readers against crafted and damaged files.

The pickles are written opcode by opcode here (nothing from torch), so any size, stride, offset,
element count or byte order can be declared. Properties: the reader either refuses the file with
our error naming it, or returns tensors whose every element is the storage element a reference
computation (an explicit enumeration of every index, in Python integers) says it is; a file is
accepted exactly when that reference finds every index inside the storage.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from tipsomaly.method import torch_pickle
from tipsomaly.method.pixel_prompts import PixelPromptError, PixelPrompts
from tipsomaly.method.text_cache import TextEmbeddingCache
from tipsomaly.method.torch_pickle import UnsafePickleError, read_torch_file

# Hypothesis' caches go to the tests' throw-away home (removed at the end), not the checkout.
set_hypothesis_home_dir(
    Path(os.environ.get("TIPSOMALY_HOME", tempfile.gettempdir())) / "hypothesis"
)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,  # no .hypothesis folder left behind
)

# -- a tiny pickle writer ------------------------------------------------------------------------


@dataclass(frozen=True)
class Global:
    module: str
    name: str


@dataclass(frozen=True)
class Call:
    func: object
    args: tuple


@dataclass(frozen=True)
class PersistentId:
    pid: tuple


def _int(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8 or 1, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1: any size, any sign


def encode(obj: object) -> bytes:
    """Pickle protocol 2 opcodes for ints, strs, bools, None, tuples, lists and the nodes above."""
    if obj is True:
        return b"\x88"
    if obj is False:
        return b"\x89"
    if obj is None:
        return b"N"
    if isinstance(obj, int):
        return _int(obj)
    if isinstance(obj, str):
        data = obj.encode()
        return b"X" + struct.pack("<I", len(data)) + data
    if isinstance(obj, tuple):
        return b"(" + b"".join(encode(v) for v in obj) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(encode(v) for v in obj) + b"e"
    if isinstance(obj, Global):
        return b"c" + obj.module.encode() + b"\n" + obj.name.encode() + b"\n"
    if isinstance(obj, Call):
        return encode(obj.func) + encode(obj.args) + b"R"
    if isinstance(obj, PersistentId):
        return encode(obj.pid) + b"Q"
    raise TypeError(type(obj))


def pickle_bytes(obj: object) -> bytes:
    return b"\x80\x02" + encode(obj) + b"."


def tensor(key: str, kind: str, numel: int, offset: int, size: tuple, stride: tuple) -> Call:
    """What ``torch.save`` writes for a tensor: _rebuild_tensor_v2(storage pid, offset, ...)."""
    storage = PersistentId(("storage", Global("torch", kind), key, "cpu", numel))
    hooks = Call(Global("collections", "OrderedDict"), ())
    return Call(
        Global("torch._utils", "_rebuild_tensor_v2"), (storage, offset, size, stride, False, hooks)
    )


def write_pth(
    path: Path, pkl: bytes, storages: dict[str, bytes], byteorder: str | None = "little"
) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        if byteorder is not None:
            z.writestr("archive/byteorder", byteorder)
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
    return path


# -- the reference --------------------------------------------------------------------------------

KINDS = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "BFloat16Storage": "u2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "u1",
}


def reference(kind, raw, numel, offset, size, stride, little) -> np.ndarray | None:
    """The tensor as torch defines it, or None where torch would have to read outside storage.

    Every index is enumerated explicitly and turned into a storage position with Python ints.
    """
    code = KINDS[kind]
    itemsize = np.dtype(code).itemsize
    ints = (offset, *size, *stride)
    if any(isinstance(v, bool) or v < 0 for v in ints) or len(size) != len(stride):
        return None
    if len(raw) != numel * itemsize:
        return None
    count = int(np.prod([int(n) for n in size], dtype=object)) if size else 1
    if count > torch_pickle.MAX_ELEMENTS:
        return None
    values = np.frombuffer(raw, dtype=("<" if little else ">") + code).astype(code)
    if count == 0:  # nothing to read (and np.ndindex would materialise a huge dimension's range)
        try:
            out = np.empty(size, dtype=code)
        except (ValueError, OverflowError):  # a shape numpy cannot hold, even empty
            return None
    else:
        out = np.empty(count, dtype=code)
        for flat, index in enumerate(np.ndindex(*size)):
            position = offset + sum(int(i) * int(s) for i, s in zip(index, stride, strict=True))
            if position >= numel:
                return None
            out[flat] = values[position]
        out = out.reshape(size)
    if kind == "BFloat16Storage":
        return (out.astype(np.uint32) << 16).view(np.float32)
    if kind == "BoolStorage":
        return out != 0
    return out


def assert_refused_naming(path: Path, exc: BaseException) -> None:
    message = str(exc)
    assert str(path) in message and "\n" not in message, message


# -- strategies -----------------------------------------------------------------------------------

small = st.integers(min_value=-2, max_value=12)
huge = st.sampled_from([2**31, 2**32 + 1, 2**62, 2**63 - 1, 2**64 + 3, 2**100, -(2**63)])
number = st.one_of(small, small, small, huge)


@st.composite
def tensor_case(draw):
    """A storage and a view of it: mostly one that just fits (or just misses), else anything."""
    kind = draw(st.sampled_from(sorted(KINDS)))
    itemsize = np.dtype(KINDS[kind]).itemsize
    byteorder = draw(st.sampled_from(["little", "little", "big", None]))
    if draw(st.integers(0, 3)):  # near the boundary of what fits
        ndim = draw(st.integers(0, 4))
        size = tuple(draw(st.integers(0, 5)) for _ in range(ndim))
        stride = tuple(draw(st.integers(0, 6)) for _ in range(ndim))
        offset = draw(st.integers(0, 5))
        need = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
        numel = max(0, need + draw(st.sampled_from([0, 0, 0, 2, -1])))
        length, declared = numel * itemsize, numel
    else:  # anything: negative, huge, mismatched lengths and counts
        numel = draw(st.integers(0, 40))
        length = max(0, numel * itemsize + draw(st.sampled_from([0, 0, -1, 1, -itemsize])))
        declared = draw(st.one_of(st.just(numel), number))
        ndim = draw(st.integers(0, 4))
        size = tuple(draw(number) for _ in range(ndim))
        stride = tuple(draw(number) for _ in range(ndim + draw(st.sampled_from([0, 0, 1, -1]))))
        offset = draw(number)
    raw = draw(st.binary(min_size=length, max_size=length))
    return kind, raw, declared, offset, size, stride, byteorder


# -- properties -----------------------------------------------------------------------------------


@FUZZ
@given(case=tensor_case())
def test_rebuilt_tensors_never_leave_their_storage(tmp_path, case):
    kind, raw, numel, offset, size, stride, byteorder = case
    path = write_pth(
        tmp_path / "case.pth",
        pickle_bytes([tensor("0", kind, numel, offset, size, stride)]),
        {"0": raw},
        byteorder,
    )
    expected = reference(kind, raw, numel, offset, size, stride, byteorder != "big")
    try:
        (got,) = read_torch_file(path)
    except UnsafePickleError as exc:
        event("refused")
        assert_refused_naming(path, exc)
        assert expected is None, f"a valid tensor was refused: {exc}"
        return
    event("read")
    assert expected is not None, f"accepted a tensor reaching outside its storage: {case[2:]}"
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


@st.composite
def damaged_file(draw):
    """A valid two-tensor file, then damaged: pickle bytes flipped/cut/inserted, or zip cut."""
    tensors = [
        tensor("0", "FloatStorage", 6, 0, (2, 3), (3, 1)),
        tensor("1", "FloatStorage", 6, 2, (2, 2), (1, 2)),
    ]
    pkl = bytearray(pickle_bytes(tensors))
    for _ in range(draw(st.integers(1, 4)) if draw(st.integers(0, 3)) else 0):
        at = draw(st.integers(0, len(pkl) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            pkl[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del pkl[at:]
            if not pkl:
                break
        else:
            pkl[at:at] = draw(st.binary(min_size=1, max_size=8))
    storages = {"0": np.arange(6, dtype="<f4").tobytes(), "1": np.ones(6, "<f4").tobytes()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=draw(st.sampled_from([0, 8]))) as z:
        z.writestr("archive/data.pkl", bytes(pkl))
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
    archive = buffer.getvalue()
    if draw(st.integers(0, 3)) == 3:  # (Hypothesis favours small integers)
        archive = archive[: draw(st.integers(0, len(archive)))]
    return archive


@FUZZ
@given(data=damaged_file())
def test_damaged_files_are_refused_or_read_never_crash(tmp_path, data):
    path = tmp_path / "damaged.pth"
    path.write_bytes(data)
    try:
        tree = read_torch_file(path)
    except UnsafePickleError as exc:
        event("refused")
        assert_refused_naming(path, exc)
        return
    event("read")
    # Whatever survived the damage holds only plain values and in-bounds arrays.
    for value in _leaves(tree):
        assert isinstance(
            value, (np.ndarray, int, float, str, bytes, bytearray, bool, set, type(None))
        )


def _leaves(tree, depth=0):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v, depth + 1)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _leaves(v, depth + 1)
    else:
        yield tree


# -- regression cases: each read memory outside the storage (or crashed) before -------------------


def _one_tensor(tmp_path, numel, offset, size, stride, raw=None):
    raw = np.arange(numel, dtype="<f4").tobytes() if raw is None else raw
    pkl = pickle_bytes([tensor("0", "FloatStorage", numel, offset, size, stride)])
    return write_pth(tmp_path / "crafted.pth", pkl, {"0": raw})


@pytest.mark.parametrize(
    ("numel", "offset", "size", "stride", "raw"),
    [
        (4, 0, (2, 8), (1000, 1), None),  # stride far past the end
        (4, 100_000, (2,), (1,), None),  # offset past the end
        (4, 0, (3,), (2,), None),  # last element one past the end
        (64, 0, (2, 2), (-8, 1), np.zeros(4096, "<f4").tobytes()),  # negative stride
        (4096, 0, (8,), (1,), np.zeros(4, "<f4").tobytes()),  # more elements declared than held
    ],
    ids=["stride", "offset", "one-past", "negative-stride", "numel"],
)
def test_tensor_outside_its_storage_is_refused(tmp_path, numel, offset, size, stride, raw):
    path = _one_tensor(tmp_path, numel, offset, size, stride, raw)
    with pytest.raises(UnsafePickleError) as info:
        read_torch_file(path)
    assert_refused_naming(path, info.value)
    with pytest.raises(UnsafePickleError):  # and so predict refuses it as pixel prompts
        PixelPrompts.from_reference_pth(path)


def test_a_tensor_rebuilt_from_a_plain_list_is_refused(tmp_path):
    # Not a storage: the old reader made an array of it and strided past its end.
    rebuild = Global("torch._utils", "_rebuild_tensor_v2")
    pkl = pickle_bytes([Call(rebuild, ([1, 2], 0, (4096,), (1,), False, None))])
    path = write_pth(tmp_path / "list.pth", pkl, {})
    with pytest.raises(UnsafePickleError, match="not from a storage"):
        read_torch_file(path)


def test_a_container_holding_itself_is_refused(tmp_path):
    # ] ( MARK ... the list is memoised, then appended to itself
    pkl = b"\x80\x02]q\x00h\x00a."
    path = write_pth(tmp_path / "cycle.pth", pkl, {})
    with pytest.raises(UnsafePickleError) as info:
        read_torch_file(path)
    assert_refused_naming(path, info.value)


def test_well_formed_tensors_are_read_exactly(tmp_path):
    # A transposed view, a broadcast (stride 0) and an offset slice, as torch.save writes them.
    raw = np.arange(12, dtype="<f4").tobytes()
    pkl = pickle_bytes(
        [
            tensor("0", "FloatStorage", 12, 0, (4, 3), (1, 4)),
            tensor("0", "FloatStorage", 12, 5, (2, 3), (0, 1)),
        ]
    )
    a, b = read_torch_file(write_pth(tmp_path / "ok.pth", pkl, {"0": raw}))
    base = np.arange(12, dtype=np.float32)
    np.testing.assert_array_equal(a, base.reshape(3, 4).T)
    np.testing.assert_array_equal(b, np.broadcast_to(base[5:8], (2, 3)))


# -- safetensors headers --------------------------------------------------------------------------

DTYPES = ["F32", "F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "U64", "F8_E4M3", "XX", 7]


@st.composite
def safetensors_file(draw):
    """A safetensors file whose header (length, JSON, dtype, shape, offsets) may lie: mostly a
    well-formed one (any values, NaN included) with at most one field changed."""
    name = draw(st.sampled_from(["preambles", "embeddings", "preambles", "other"]))
    wild = draw(st.integers(0, 9)) >= 7
    dtype = draw(st.sampled_from(["F32", "F32", "F16", "BF16", "F64"]))
    shape = [draw(st.sampled_from([2, 2, 3])), draw(st.integers(0, 4)), draw(st.integers(0, 4))]
    if name == "embeddings":
        shape = shape[:1] + [4]
    size = int(np.prod(shape)) * {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}[dtype]
    data = draw(st.binary(min_size=size, max_size=size))
    offsets = [0, len(data)]
    metadata = None
    change = None
    if draw(st.booleans()):
        change = draw(st.sampled_from(["dtype", "shape", "offsets", "data", "metadata"]))
    if change == "dtype":
        dtype = draw(st.sampled_from(DTYPES))
    elif change == "shape":
        shape = draw(st.lists(st.one_of(small, huge), min_size=0, max_size=4))
    elif change == "offsets":
        offsets = [draw(number), draw(number)]
    elif change == "data":
        data = data[: draw(st.integers(0, len(data)))] + draw(st.binary(max_size=8))
    elif change == "metadata":
        metadata = draw(st.sampled_from([{"a": "b"}, {"a": 1}, "text", {"source": "x"}]))
    header = {name: {"dtype": dtype, "shape": shape, "data_offsets": offsets}}
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    length = len(text)
    if wild:  # a broken header: cut, prefixed, or with another length
        text = draw(st.sampled_from([text, text[: len(text) // 2], b"\xff" + text]))
        length = draw(st.one_of(st.just(length), number.filter(lambda n: 0 <= n < 2**64)))
    return struct.pack("<Q", length) + text + data


@FUZZ
@given(data=safetensors_file())
def test_malformed_pixel_prompt_files_give_our_error(tmp_path, data):
    path = tmp_path / "prompts.safetensors"
    path.write_bytes(data)
    try:
        prompts = PixelPrompts.load(path)
    except PixelPromptError as exc:
        event("refused")
        assert_refused_naming(path, exc)
        return
    event("read")
    p = prompts.preambles
    assert p.dtype == torch.float32 and p.ndim == 3 and p.shape[0] == 2
    assert bool(torch.isfinite(p).all())


@FUZZ
@given(data=safetensors_file())
def test_malformed_text_cache_entries_are_dropped(tmp_path, data):
    cache = TextEmbeddingCache(tmp_path / "text")
    key = "ab" + "0" * 30
    path = cache._path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    got = cache.get(key, shape=(2, 4))
    event("dropped" if got is None else "read")
    if got is None:
        assert not path.exists()  # dropped, so it is recomputed and rewritten
    else:
        assert got.dtype == torch.float32 and got.shape == (2, 4)
        assert bool(torch.isfinite(got).all())


NUMPY_OF = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}


@st.composite
def well_formed_prompts(draw):
    dtype = draw(st.sampled_from(sorted(NUMPY_OF)))
    shape = [2, draw(st.integers(1, 3)), draw(st.integers(1, 4))]
    itemsize = np.dtype(NUMPY_OF[dtype]).itemsize
    n = int(np.prod(shape)) * itemsize
    data = draw(st.binary(min_size=n, max_size=n))
    header = json.dumps({"preambles": {"dtype": dtype, "shape": shape, "data_offsets": [0, n]}})
    return dtype, shape, struct.pack("<Q", len(header)) + header.encode() + data, data


@FUZZ
@given(case=well_formed_prompts())
def test_well_formed_prompt_files_are_read_exactly_unless_not_finite(tmp_path, case):
    dtype, shape, file_bytes, data = case
    path = tmp_path / "prompts.safetensors"
    path.write_bytes(file_bytes)
    values = np.frombuffer(data, dtype=NUMPY_OF[dtype])
    if dtype == "BF16":
        values = (values.astype(np.uint32) << 16).view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # NaN/inf inputs are a case here
        expected = values.astype(np.float32).reshape(shape)
    if not np.isfinite(expected).all():
        event("refused: not finite")
        with pytest.raises(PixelPromptError, match="NaN or infinite") as info:
            PixelPrompts.load(path)
        assert_refused_naming(path, info.value)
        return
    event("read")
    loaded = PixelPrompts.load(path).preambles
    assert loaded.dtype == torch.float32
    assert loaded.numpy().tobytes() == expected.tobytes()
