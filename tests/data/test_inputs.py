"""Input expansion that never stops a batch: odd names, unreadable folders, masks, old outputs."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tipsomaly.data.images import ImageLoadError, display_path, load_image
from tipsomaly.data.inputs import expand_inputs, folder_class_name, output_names


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), value, np.uint8)).save(path)
    return path


def _bytes_name(folder: Path, raw: bytes) -> Path:
    """A file whose name holds bytes that are not UTF-8 (as POSIX allows)."""
    return folder / os.fsdecode(raw)


# -- names with bytes that are not UTF-8 --------------------------------------------------------
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX byte file names")
def test_non_utf8_names_are_expanded_named_and_loadable(tmp_path):
    good = _png(tmp_path / "in" / "a.png")
    odd = _png(_bytes_name(tmp_path / "in", b"caf\xe9.png"))
    files = expand_inputs([tmp_path / "in"])
    assert sorted(files) == sorted([good, odd])
    # the kept name opens the very file (surrogateescape round trip)
    assert load_image(odd).size == (8, 6)
    names = output_names(files)
    assert len(set(names)) == 2
    # every rendering for tables/JSON is UTF-8 encodable and shows the odd byte
    shown = [display_path(f) for f in files]
    for text in shown:
        text.encode("utf-8")
    assert any(t.endswith("caf\\xe9.png") for t in shown)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX byte file names")
def test_same_name_clash_with_non_utf8_bytes_gets_a_hash_suffix(tmp_path):
    # x.png, x and x.png.jpg: "x" clashes, then "x.png" clashes: the path digest decides,
    # and the folder's name holds a byte that is not UTF-8
    d = tmp_path / os.fsdecode(b"d\xff")
    files = [_png(d / "x.png"), d / "x", d / "x.png.jpg"]
    files[1].write_bytes(files[0].read_bytes())
    files[2].write_bytes(files[0].read_bytes())
    names = output_names(files)
    assert len(set(names)) == 3
    assert names[1] == "x"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX byte file names")
def test_folder_class_name_is_text(tmp_path):
    f = _png(_bytes_name(tmp_path / os.fsdecode(b"bott\xe9"), b"1.png"))
    name = folder_class_name(f)
    assert name == "bott\\xe9"
    name.encode("utf-8")


def test_display_path_rules():
    assert display_path("plain/ü.png") == "plain/ü.png"
    assert display_path(Path(os.fsdecode(b"a\xff.png"))) == "a\\xff.png"
    assert display_path(b"b\xfe.png") == "b\\xfe.png"
    assert display_path("lone\ud800") == "lone\\ud800"  # not from the file system: still safe


def test_image_error_message_is_utf8_safe(tmp_path):
    missing = Path(os.fsdecode(os.fsencode(tmp_path) + b"/gone\xff.png"))
    with pytest.raises(ImageLoadError) as info:
        load_image(missing)
    str(info.value).encode("utf-8")
    assert "gone\\xff.png" in str(info.value)
    assert info.value.path == missing  # the real path is kept for the caller


# -- unreadable folders ------------------------------------------------------------------------
def test_unreadable_subfolder_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    ok = _png(tmp_path / "in" / "a" / "1.png")
    _png(tmp_path / "in" / "locked" / "2.png")
    locked = str(tmp_path / "in" / "locked")
    real_scandir = os.scandir

    def scandir(path="."):  # what a folder without read permission does for a normal user
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="tipsomaly.data.inputs"):
        files = expand_inputs([tmp_path / "in"])
    assert files == [ok]
    assert any(
        "locked" in r.getMessage() and "cannot read" in r.getMessage() for r in caplog.records
    )


def test_file_in_a_folder_without_search_permission_stays_an_input(tmp_path, monkeypatch):
    # stat() of a file under a folder without x permission raises PermissionError (not ENOENT)
    target = str(tmp_path / "locked" / "x.png")
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if os.fspath(path) == target:
            raise PermissionError(13, "Permission denied", target)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    assert expand_inputs([target]) == [Path(target)]


_DAC_CAPS = "-dac_override,-dac_read_search"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_real_unreadable_folder(tmp_path):
    """The same with real permissions. Root reads any folder, so as root the check runs in a
    child process without the two capabilities that let root bypass permissions."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop the DAC capabilities")
        prefix = [setpriv, f"--inh-caps={_DAC_CAPS}", f"--bounding-set={_DAC_CAPS}"]
    base = Path(os.path.realpath(tmp_path))
    ok = _png(base / "in" / "a" / "1.png")
    _png(base / "in" / "locked" / "2.png")
    explicit = _png(base / "in" / "noexec" / "3.png")
    code = (
        "import logging, sys\n"
        "from tipsomaly.data.inputs import expand_inputs\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        f"files = expand_inputs([{str(base / 'in')!r}, {str(explicit)!r}])\n"
        "print('\\n'.join(map(str, files)))\n"
    )
    os.chmod(base / "in" / "locked", 0)
    os.chmod(base / "in" / "noexec", 0o644)  # listable, but its files cannot be reached
    try:
        result = subprocess.run(
            [*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
    finally:
        os.chmod(base / "in" / "locked", 0o755)
        os.chmod(base / "in" / "noexec", 0o755)
    if prefix and result.returncode != 0 and "setpriv" in result.stderr:
        pytest.skip(f"setpriv refused here: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split()
    assert listed[0] == str(ok)
    assert listed[1:] == [str(explicit)]  # named explicitly: kept (it becomes an error row)
    assert "locked" in result.stderr and "cannot read" in result.stderr


# -- ground-truth folders and earlier outputs ---------------------------------------------------
def test_mvtec_tree_mask_folders_are_not_inputs(tmp_path):
    root = tmp_path / "mvtec"
    keep = [
        _png(root / "bottle" / "test" / "broken" / "000.png"),
        _png(root / "bottle" / "test" / "good" / "000.png"),
        _png(root / "bottle" / "train" / "good" / "000.png"),
        _png(root / "brain" / "images" / "1.png"),
    ]
    _png(root / "bottle" / "ground_truth" / "broken" / "000_mask.png")
    _png(root / "brain" / "masks" / "1.png")
    _png(root / "wood" / "Ground_Truth" / "x_mask.png")  # alone: a folder of its own
    keep.append(root / "wood" / "Ground_Truth" / "x_mask.png")
    assert sorted(expand_inputs([root])) == sorted(keep)
    # named explicitly, a mask folder is searched
    assert expand_inputs([root / "bottle" / "ground_truth"]) == [
        root / "bottle" / "ground_truth" / "broken" / "000_mask.png"
    ]


@pytest.mark.parametrize(
    "marker", [("scores.csv", "scores.json"), ("results.json",)], ids=["predict", "eval"]
)
def test_earlier_output_folder_inside_the_input_is_skipped(tmp_path, marker, caplog):
    data = tmp_path / "data"
    img = _png(data / "x.png")
    old = data / "old-run"
    _png(old / "overlays" / "x.png")
    for name in marker:
        (old / name).write_text("{}\n")
    with caplog.at_level(logging.INFO, logger="tipsomaly.data.inputs"):
        assert expand_inputs([data]) == [img]
    assert any("old-run" in r.getMessage() for r in caplog.records)


def test_a_lone_scores_csv_does_not_hide_a_folder(tmp_path):
    data = tmp_path / "data"
    img = _png(data / "sub" / "x.png")
    (data / "sub" / "scores.csv").write_text("a,b\n")
    assert expand_inputs([data]) == [img]


def test_non_utf8_predict_cli_does_not_abort(tmp_path):
    """The data side of ``predict``: expansion, names and classes of an odd name are all text."""
    if sys.platform == "win32":
        pytest.skip("POSIX byte file names")
    d = tmp_path / os.fsdecode(b"cl\xe4ss")
    files = [_png(d / "a.png"), _png(_bytes_name(d, b"\xff\xfe.png"))]
    listed = expand_inputs([d])
    assert sorted(listed) == sorted(files)
    for f, name in zip(listed, output_names(listed), strict=True):
        for text in (display_path(f), display_path(name), folder_class_name(f)):
            text.encode("utf-8")
    shutil.rmtree(d)
