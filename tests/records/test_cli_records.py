"""The records options on the command line: a database that cannot be used stops ``serve``
with one line and exit status 1 (before the model loads); ``--keep-images`` alone and
``profile update --from-db`` without the images' folder are refused in one line."""

from __future__ import annotations

import pytest

from synthetic import tiny_model_dir
from tipsomaly.cli.main import main

pytest.importorskip("fastapi")


@pytest.mark.parametrize(
    ("db", "says"),
    [
        ("postgresql://u@127.0.0.1:1/db", "Connection refused"),
        ("{tmp}/no/such/folder/r.sqlite", "does not exist"),
    ],
)
def test_serve_with_an_unusable_database_stops_in_one_line(tmp_path, capsys, db, says):
    model = tiny_model_dir(tmp_path / "model")
    args = ["serve", "--model", str(model), "--image-size", "70", "--port", "0",
            "--db", db.format(tmp=tmp_path)]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and err[0].startswith("tipsomaly: error: ")


def test_keep_images_needs_a_database(tmp_path, capsys):
    model = tiny_model_dir(tmp_path / "model")
    args = ["serve", "--model", str(model), "--port", "0", "--keep-images", str(tmp_path)]
    assert main(args) == 1
    assert "--keep-images needs --db" in capsys.readouterr().err


def test_from_db_needs_the_images_folder(tmp_path, capsys):
    code = main(["profile", "update", str(tmp_path), "--from-db", str(tmp_path / "r.sqlite")])
    assert code == 1
    assert "--from-db needs --keep-images DIR" in capsys.readouterr().err
