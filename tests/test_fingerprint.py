"""The one identity helper (tipsomaly.fingerprint) and its users: store, text cache, features."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from tipsomaly import fingerprint
from tipsomaly.data.meta import Sample
from tipsomaly.method.text_cache import TextEmbeddingCache
from tipsomaly.runners import features, store
from tipsomaly.runners.config import EvalConfig


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    """Each test starts with an empty per-process memo of file digests."""
    monkeypatch.setattr(fingerprint, "_FILE_DIGESTS", {})


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _count_hashing(monkeypatch) -> list[int]:
    """Count the SHA-256 objects the module creates (one per file actually read)."""
    made: list[int] = []

    def sha256(*args):
        made.append(1)
        return hashlib.sha256(*args)

    monkeypatch.setattr(fingerprint, "hashlib", types.SimpleNamespace(sha256=sha256))
    return made


# -- files ------------------------------------------------------------------------------------
def test_same_bytes_have_the_same_id_at_any_path(tmp_path):
    a = _write(tmp_path / "a.png", b"\x89PNG same bytes")
    b = _write(tmp_path / "elsewhere" / "b.bin", b"\x89PNG same bytes")
    assert fingerprint.file_digest(a) == fingerprint.file_digest(str(b))
    assert fingerprint.file_digest(a) == hashlib.sha256(b"\x89PNG same bytes").hexdigest()


def test_one_changed_byte_changes_the_id(tmp_path):
    data = bytearray(os.urandom(5000))
    a = _write(tmp_path / "a", bytes(data))
    data[4321] ^= 1
    b = _write(tmp_path / "b", bytes(data))
    assert fingerprint.file_digest(a) != fingerprint.file_digest(b)


def test_a_file_is_read_in_chunks(tmp_path, monkeypatch):
    data = os.urandom(1000)
    path = _write(tmp_path / "f", data)
    reads: list[int] = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def fileno(self):
            return self.f.fileno()

        def readinto(self, buffer):
            n = self.f.readinto(buffer)
            reads.append(n)
            return n

    monkeypatch.setattr(fingerprint, "CHUNK", 64)
    monkeypatch.setattr(fingerprint, "open", lambda p, m: Counting(real_open(p, m)), raising=False)
    assert fingerprint.file_digest(path) == hashlib.sha256(data).hexdigest()
    assert max(reads) == 64 and sum(reads) == 1000


def test_an_unchanged_file_is_read_once_per_process(tmp_path, monkeypatch):
    path = _write(tmp_path / "f", b"content")
    made = _count_hashing(monkeypatch)
    first = fingerprint.file_digest(path)
    assert fingerprint.file_digest(path) == first and fingerprint.file_digest(str(path)) == first
    assert len(made) == 1


def _same_size_and_mtime(path: Path, data: bytes, st: os.stat_result) -> os.stat_result:
    """Rewrite ``path`` in place with ``data`` (same length) and put its mtime back."""
    assert len(data) == st.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    while os.stat(path).st_ctime_ns == st.st_ctime_ns:  # the clock may not have ticked yet
        time.sleep(0.005)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return os.stat(path)


def test_rewritten_in_place_with_same_size_and_mtime_is_read_again(tmp_path):
    path = _write(tmp_path / "f", b"old content")
    before = os.stat(path)
    old = fingerprint.file_digest(path)
    after = _same_size_and_mtime(path, b"new content", before)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert fingerprint.file_digest(path) == hashlib.sha256(b"new content").hexdigest() != old


def test_replaced_by_another_file_with_same_size_and_mtime_is_read_again(tmp_path):
    path = _write(tmp_path / "f", b"old content")
    before = os.stat(path)
    old = fingerprint.file_digest(path)
    other = _write(tmp_path / "g", b"new content")
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, path)  # a new inode under the old name
    after = os.stat(path)
    assert after.st_ino != before.st_ino
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert fingerprint.file_digest(path) != old


def test_an_unreadable_file_raises(tmp_path):
    with pytest.raises(OSError):
        fingerprint.file_digest(tmp_path / "missing")


def test_files_digest_names_the_set_of_files_and_their_bytes(tmp_path):
    a, b = _write(tmp_path / "a", b"1"), _write(tmp_path / "b", b"2")
    both = fingerprint.files_digest([a, b])
    assert fingerprint.files_digest([b, a, str(a)]) == both  # order and spelling of the list
    assert len(both) == 32
    b.write_bytes(b"3")
    assert fingerprint.files_digest([a, b]) != both
    missing = fingerprint.files_digest([a, tmp_path / "c"])
    assert missing != fingerprint.files_digest([a]) and missing != both


# -- settings and prompts ---------------------------------------------------------------------
def test_dict_key_order_is_irrelevant_at_every_depth():
    one = {"model": "l14h", "sizes": {"image": 518, "batch": 8}, "prompts": ["a", "b"]}
    two = {"prompts": ["a", "b"], "sizes": {"batch": 8, "image": 518}, "model": "l14h"}
    assert fingerprint.digest(one) == fingerprint.digest(two)
    assert fingerprint.canonical_json(one) == fingerprint.canonical_json(two)
    assert fingerprint.digest({**one, "prompts": ["b", "a"]}) != fingerprint.digest(one)


def test_floats_are_exact():
    close = math.nextafter(0.1, 1.0)
    assert fingerprint.digest({"sigma": 0.1}) != fingerprint.digest({"sigma": close})
    assert fingerprint.canonical_json({"sigma": close}) == f'{{"sigma": {close!r}}}'


def test_one_changed_setting_changes_the_id():
    base = {"image_size": 518, "dtype": "fp32"}
    assert fingerprint.digest(base) != fingerprint.digest({**base, "image_size": 519})
    assert len(fingerprint.digest(base)) == 32 and len(fingerprint.digest(base, 16)) == 16
    assert fingerprint.digest(base).startswith(fingerprint.digest(base, 16))


def test_paths_are_written_as_text():
    assert fingerprint.digest({"file": Path("/x/y")}) == fingerprint.digest({"file": "/x/y"})


def test_prompts_digest_takes_a_dataclass_or_its_fields():
    from tipsomaly.method.prompts import load_prompts

    prompts = load_prompts("industrial")
    fields = dataclasses.asdict(prompts)
    assert fingerprint.prompts_digest(prompts) == fingerprint.prompts_digest(fields)
    assert fingerprint.prompts_digest(prompts) != fingerprint.prompts_digest(
        load_prompts("medical")
    )


# -- weights ----------------------------------------------------------------------------------
def test_tensor_digest_is_shape_and_values():
    t = torch.arange(6.0).reshape(2, 3)
    assert fingerprint.tensor_digest(t) == fingerprint.tensor_digest(t.clone().to(torch.float64))
    assert fingerprint.tensor_digest(t).startswith("(2, 3):")
    assert fingerprint.tensor_digest(t) != fingerprint.tensor_digest(t.reshape(3, 2))
    changed = t.clone()
    changed[1, 2] += 1
    assert fingerprint.tensor_digest(changed) != fingerprint.tensor_digest(t)


def test_tensors_digest_covers_names_shapes_and_values():
    state = {"b": torch.ones(4), "a": torch.zeros(2, 2)}
    same = {"a": torch.zeros(2, 2), "b": torch.ones(4)}
    assert fingerprint.tensors_digest(state) == fingerprint.tensors_digest(same)
    assert len(fingerprint.tensors_digest(state)) == 16
    others = [
        {"a": torch.zeros(2, 2), "c": torch.ones(4)},
        {"a": torch.zeros(4), "b": torch.ones(4)},
        {"a": torch.zeros(2, 2), "b": torch.tensor([1.0, 1.0, 1.0, 1.5])},
    ]
    for other in others:
        assert fingerprint.tensors_digest(other) != fingerprint.tensors_digest(state)


def test_importing_the_module_does_not_import_torch():
    code = "import sys, tipsomaly.fingerprint; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- every user calls the helper --------------------------------------------------------------
def _spy(monkeypatch, name: str) -> list[tuple]:
    calls: list[tuple] = []
    real = getattr(fingerprint, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(fingerprint, name, spy)
    return calls


def test_the_prediction_store_keys_on_the_helper(tmp_path, monkeypatch):
    image, mask = _write(tmp_path / "a.png", b"image"), _write(tmp_path / "m.png", b"mask")
    files, settings = _spy(monkeypatch, "file_digest"), _spy(monkeypatch, "digest")
    key, pred_key = store.sample_keys("screw", image, 1, mask)
    assert [c[0] for c in files] == [image, mask]
    assert len(settings) == 2
    assert store.config_key({"image_size": 518}) == fingerprint.digest(
        [store.FORMAT, {"image_size": 518}], 16
    )
    # content, not place: a copy elsewhere has the same keys
    copy = _write(tmp_path / "copy" / "b.png", b"image")
    mask_copy = _write(tmp_path / "copy" / "n.png", b"mask")
    assert store.sample_keys("screw", copy, 1, mask_copy) == (key, pred_key)


def test_store_keys_identify_files_and_model_folders_with_the_helper(tmp_path, monkeypatch):
    prompt_file = _write(tmp_path / "prompts.json", b"{}")
    model_dir = tmp_path / "model"
    _write(model_dir / "weights.npz", b"w")
    files, folders = _spy(monkeypatch, "file_digest"), _spy(monkeypatch, "files_digest")
    settings = EvalConfig(
        model=str(model_dir), prompt_file=str(prompt_file), pixel_prompts="none", device="cpu"
    )
    config = store.prediction_config(settings)
    assert config["prompt_file"].endswith("#" + fingerprint.file_digest(prompt_file))
    assert files
    (call,) = folders
    assert config["model"] == f"{model_dir.resolve()}#{fingerprint.files_digest(*call)}"


def test_the_text_cache_keys_on_the_helper(monkeypatch):
    settings, tensors = _spy(monkeypatch, "digest"), _spy(monkeypatch, "tensor_digest")
    preambles = torch.ones(2, 3)
    key = TextEmbeddingCache.key(model="abc", kind="learned", preambles=preambles)
    assert len(settings) == 1 and len(tensors) == 1
    expected = {"format": 1, "model": "abc", "kind": "learned"}
    expected["preambles"] = fingerprint.tensor_digest(preambles)
    assert key == fingerprint.digest(expected, 32)
    assert TextEmbeddingCache.key(kind="learned", preambles=preambles, model="abc") == key


def test_the_feature_cache_keys_on_the_helper(tmp_path, monkeypatch):
    image = _write(tmp_path / "a.png", b"image")
    mask = _write(tmp_path / "m.png", b"mask")
    sample = Sample(image, mask, "screw", "scratch", 1)
    files, settings = _spy(monkeypatch, "file_digest"), _spy(monkeypatch, "digest")
    key = features.sample_key(sample)
    assert [c[0] for c in files] == [image, mask] and len(settings) == 1
    copy = Sample(
        _write(tmp_path / "c" / "b.png", b"image"),
        _write(tmp_path / "c" / "n.png", b"mask"),
        "other_class",
        "other",
        1,
    )
    assert features.sample_key(copy) == key  # the same bytes and label, anywhere
    assert features.sample_key(Sample(image, mask, "screw", "good", 0)) != key
    mask.write_bytes(b"Mask")
    assert features.sample_key(sample) != key


def test_a_model_without_loader_fingerprint_is_known_by_its_vision_tensors(monkeypatch):
    vision = torch.nn.Linear(2, 2)
    model = types.SimpleNamespace(fingerprint=None, vision=vision)
    calls = _spy(monkeypatch, "tensors_digest")
    assert features.model_fingerprint(model) == fingerprint.tensors_digest(vision.state_dict())
    assert len(calls) == 2
    model.fingerprint = "0123456789abcdef-and-more"
    assert features.model_fingerprint(model) == "0123456789abcdef"
