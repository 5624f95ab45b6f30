"""``fit`` at its seams: a reference whose features or scores are not finite stops the fit with
one line naming that image (library: a ProfileError; CLI: exit 1, no traceback, no profile)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from synthetic import tiny_model_dir
from tipsomaly.cli.main import main
from tipsomaly.errors import TipsomalyError
from tipsomaly.method import detector as detector_module
from tipsomaly.method.detector import Detector
from tipsomaly.method.fitting import fit_profile
from tipsomaly.method.profile import ProfileError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("fit-seams") / "model")


def _size(model_dir) -> int:
    return 4 * json.loads((model_dir / "model.json").read_text())["vision"]["patch_size"]


def _references(folder, n: int = 3) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"ref_{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _poison(encode, row: int):
    """encode_image whose features of batch row ``row`` are NaN (an fp16 overflow would be)."""

    def encode_with_nan(images):
        features = encode(images)
        if features.patches.shape[0] > row:
            features.patches[row] = float("nan")
        return features

    return encode_with_nan


@pytest.mark.parametrize("tile", [None, 28])
def test_a_non_finite_reference_is_named_in_one_line(model_dir, tmp_path, tile):
    refs = _references(tmp_path / "refs")
    det = Detector(model_dir, image_size=_size(model_dir), text_cache=False, tile=tile)
    det.model.encode_image = _poison(det.model.encode_image, 1)
    with pytest.raises(ProfileError) as info:
        fit_profile(det, refs, "tile")
    message = str(info.value)
    assert isinstance(info.value, TipsomalyError) and len(message.splitlines()) == 1
    assert "not finite" in message
    # untiled, batch row 1 is the second reference; tiled, each reference's tiles make the batch
    named = refs[1] if tile is None else refs[0]
    assert str(named) in message


def test_fit_cli_stops_with_one_line_and_writes_no_profile(
    model_dir, tmp_path, capsys, monkeypatch
):
    refs = _references(tmp_path / "refs")
    real = detector_module.Detector.__init__

    def poisoned_init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        self.model.encode_image = _poison(self.model.encode_image, 0)

    monkeypatch.setattr(detector_module.Detector, "__init__", poisoned_init)
    out = tmp_path / "profile"
    argv = ["fit", str(refs[0].parent), "--class-name", "tile", "--model", str(model_dir)]
    argv += ["--image-size", str(_size(model_dir)), "--dtype", "fp32", "--out", str(out), "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tipsomaly: error: reference ") and len(err.splitlines()) == 1, err
    assert "not finite" in err and "ref_0.png" in err
    assert not (out / "profile.json").exists()
