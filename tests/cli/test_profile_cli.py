"""``tipsomaly profile update|history|rollback`` end to end, with ``fit`` and ``predict``.

The feedback loop of issue 20 on generated textures (benchmarks/fewshot.py's): a class fitted
on one texture variant flags a normal image of another legitimate variant (a false alarm);
added with ``profile update --add-normal`` it is no longer flagged by ``predict --profile``;
``profile rollback`` brings back the old decisions, scores.csv identical.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import tiny_model_dir
from tipsomaly.cli.exit_codes import ExitCode
from tipsomaly.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from fewshot import TextureClass, to_uint8  # noqa: E402

SIZE = 112


def save(folder: Path, images: list[np.ndarray]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{folder.name}_{i:02d}.png"
        Image.fromarray(to_uint8(image)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile-cli")
    usual, other = TextureClass("stripes", 0), TextureClass("stripes", 1)  # two normal looks
    rng = np.random.default_rng(5)
    refs = save(root / "refs", [usual.normal(rng, SIZE) for _ in range(19)])
    variant = save(root / "variant", [other.normal(rng, SIZE) for _ in range(5)])
    profile = root / "profile"
    code = main(
        ["fit", str(root / "refs"), "--class-name", "stripes", "--model",
         str(tiny_model_dir(root / "model")), "--image-size", str(SIZE), "--dtype", "fp32",
         "--false-alarm-rate", "0.1", "--out", str(profile), "-q"]
    )  # fmt: skip
    assert code == 0
    return {"root": root, "profile": profile, "refs": refs, "variant": variant}


def predict(data, images: list[str], out: Path) -> list[dict[str, str]]:
    code = main(
        ["predict", *images, "--class-name", "stripes", "--profile", str(data["profile"]),
         "--dtype", "fp32", "--no-overlays", "--out", str(out), "-q"]
    )  # fmt: skip
    assert code == 0
    with open(out / "scores.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_false_alarm_added_as_normal_is_no_longer_flagged_and_rollback_restores(
    data, tmp_path, capsys
):
    false_alarm = data["variant"][0]
    before = predict(data, data["variant"], tmp_path / "before")
    assert before[0]["is_anomalous"] == "true", "the case needs a flagged normal variant"

    code = main(["profile", "update", str(data["profile"]), "--add-normal", *data["variant"]])
    assert code == ExitCode.OK
    assert "version 2 (added 5 normal image(s); parent: version 1" in capsys.readouterr().out
    after = predict(data, [false_alarm], tmp_path / "after")
    assert after[0]["is_anomalous"] == "false"

    capsys.readouterr()
    assert main(["profile", "history", str(data["profile"])]) == ExitCode.OK
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:6] == ["version", "created", "digest", "parent", "refs", "zero-shot"]
    assert table[1].split()[0] == "1" and table[1].split()[4] == "19"
    assert table[2].split()[:2] == ["*", "2"] and table[2].split()[5] == "24"

    assert main(["profile", "rollback", str(data["profile"]), "-q"]) == ExitCode.OK
    restored = predict(data, data["variant"], tmp_path / "restored")
    keys = ("path", "image_score", "is_anomalous", "threshold", "mode")
    assert [[r[k] for k in keys] for r in restored] == [[r[k] for k in keys] for r in before]
    capsys.readouterr()
    assert main(["profile", "history", str(data["profile"])]) == ExitCode.OK
    last = capsys.readouterr().out.splitlines()[3]
    assert last.split()[:2] == ["*", "3"] and last.endswith("(restores 1)")


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["update", "{p}", "--add-normal", "{ref}"], ExitCode.ERROR, "a duplicate of reference"),
        (["update", "{p}", "--add-normal", "{root}/none.png"], ExitCode.ERROR, "none.png"),
        (["update", "{p}", "--add-normal", "{root}/empty"], ExitCode.NO_INPUTS, "empty"),
        (["update", "{p}"], ExitCode.ERROR, "needs images to add: --add-normal"),
        (["update", "{root}/nothing", "--add-normal", "{ref}"], ExitCode.ERROR, "does not exist"),
        (["rollback", "{p}", "--to", "99"], ExitCode.ERROR, "no version 99"),
    ],
)
def test_errors_are_one_line_with_their_exit_status(data, capsys, argv, code, message):
    fill = {"p": str(data["profile"]), "ref": data["refs"][0], "root": str(data["root"])}
    (data["root"] / "empty").mkdir(exist_ok=True)
    before = (data["profile"] / "profile.json").read_text()
    assert main(["profile", *(a.format(**fill) for a in argv)]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tipsomaly: error:") and message in err[0]
    assert (data["profile"] / "profile.json").read_text() == before


def test_a_folder_that_cannot_be_written_is_one_line(data, capsys, monkeypatch):
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("tipsomaly.method.profile_versions.atomic_path", refuse)
    extra = save(
        data["root"] / "extra", [TextureClass("stripes", 2).normal(np.random.default_rng(0), SIZE)]
    )
    before = (data["profile"] / "profile.json").read_text()
    assert main(["profile", "update", str(data["profile"]), "--add-normal", *extra, "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tipsomaly: error: cannot write ")
    assert err[0].endswith(": Permission denied")
    assert (data["profile"] / "profile.json").read_text() == before


def test_an_unreadable_image_and_a_newer_format_are_one_line(data, capsys, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert main(["profile", "update", str(data["profile"]), "--add-normal", str(broken), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.png" in err[0]
    newer = tmp_path / "newer"
    shutil.copytree(data["profile"], newer)
    record = (newer / "profile.json").read_text()
    (newer / "profile.json").write_text(
        record.replace('"tipsomaly-profile-', '"tipsomaly-profile-7', 1)
    )
    for verb in (
        ["update", str(newer), "--add-normal", data["variant"][0]],
        ["history", str(newer)],
    ):
        assert main(["profile", *verb]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "written by a newer tipsomaly" in err[0]


def test_a_fit_into_a_folder_with_a_history_is_its_next_version(data, tmp_path):
    from tipsomaly.method.profile import Profile, profile_digest
    from tipsomaly.method.profile_versions import history, load_version

    profile = tmp_path / "profile"
    shutil.copytree(data["profile"], profile)
    assert main(["profile", "update", str(profile), "--add-normal", data["variant"][0], "-q"]) == 0
    kept = history(profile)
    fit = ["fit", *data["refs"][:6], "--class-name", "stripes", "--model",
           str(data["root"] / "model"), "--image-size", str(SIZE), "--dtype", "fp32",
           "--out", str(profile), "--no-report", "-q"]  # fmt: skip
    assert main(fit) == 0
    entries = history(profile)

    def same(e):
        return e.version, e.digest, e.parent, e.references, e.thresholds

    assert [same(e) for e in entries[:-1]] == [same(e) for e in kept]  # the earlier stay
    assert [e.current for e in entries] == [False] * len(kept) + [True]
    new = entries[-1]
    assert new.version == kept[-1].version + 1 and new.parent == kept[-1].digest
    assert new.references == 6
    current = Profile.load(profile)
    assert (current.version, profile_digest(current)) == (new.version, new.digest)
    assert main(["profile", "rollback", str(profile), "-q"]) == 0
    restored = Profile.load(profile)
    assert restored.image_threshold() == load_version(profile, kept[-1].version).image_threshold()
