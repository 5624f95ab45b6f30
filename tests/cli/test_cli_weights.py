"""``tipsomaly weights ...`` end to end, through the console entry point."""

from __future__ import annotations

import subprocess
import sys

from tipsomaly.cli.main import main
from tipsomaly.tips.presets import PRESETS


def test_weights_list_prints_every_preset(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path))
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for preset in PRESETS.values():
        assert preset.name in out and preset.short_name in out
    assert str(tmp_path) in out


def test_weights_list_shows_cached(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path))
    preset = PRESETS["tips-v1-b14-highres"]
    (tmp_path / "weights").mkdir()
    for name in (preset.vision_file, preset.text_file, "tokenizer.model"):
        (tmp_path / "weights" / name).write_bytes(b"x")
    assert main(["weights", "list", "--json"]) == 0
    import json

    rows = {r["short"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["b14h"]["cached"] == "yes" and rows["l14h"]["cached"] == "no"


def test_weights_path(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path))
    assert main(["weights", "path", "l14h"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "weights" / "tips_oss_l14_highres_distilled_vision.npz") in out
    assert "https://storage.googleapis.com/tips_data/v1_0/checkpoints/pytorch/" in out


def test_offline_download_fails_with_urls_and_paths(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path))
    assert main(["weights", "download", "l14h", "--offline"]) == 1
    err = capsys.readouterr().err
    preset = PRESETS["tips-v1-l14-highres"]
    assert preset.vision_url in err and preset.text_url in err
    assert str(tmp_path / "weights" / preset.vision_file) in err


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["weights", "path", "l15h"]) == 1
    assert "unknown TIPS preset" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "tipsomaly", "weights", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "l14h" in out


def test_help_does_not_import_torch():
    code = (
        "import sys; from tipsomaly.cli.main import build_parser; build_parser(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_preset_is_its_own_error_with_a_plain_message():
    """Not a bare KeyError (main() no longer shows those as user errors), still a KeyError."""
    import pytest

    from tipsomaly.errors import TipsomalyError, UnknownModelError
    from tipsomaly.tips.presets import get_preset

    with pytest.raises(UnknownModelError) as info:
        get_preset("l15h")
    assert isinstance(info.value, KeyError) and isinstance(info.value, TipsomalyError)
    assert str(info.value).startswith("unknown TIPS preset 'l15h'; known presets: s14h")


def test_unknown_preset_from_the_cli_is_one_line(capsys):
    assert main(["weights", "download", "l15h", "--offline"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tipsomaly: error: unknown TIPS preset 'l15h'") and err.count("\n") == 1
