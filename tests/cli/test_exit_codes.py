"""One exit-code map: every status the verbs return is an ExitCode the README documents."""

from __future__ import annotations

import re
from pathlib import Path

from tipsomaly.cli.exit_codes import ExitCode
from tipsomaly.cli.main import main

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_documents_every_exit_code():
    text = README.read_text()
    bullet = re.search(r"\*\*Exit status\*\*.*?(?=\n- \*\*|\n## )", text, re.S)
    assert bullet, "README has no 'Exit status' bullet"
    documented = {int(n) for n in re.findall(r"`(\d+)`", bullet.group(0))}
    assert documented == {int(c) for c in ExitCode}


def test_cli_modules_use_the_map_not_literals():
    cli = Path(__file__).resolve().parents[2] / "src" / "tipsomaly" / "cli"
    for path in cli.glob("*.py"):
        if path.name == "exit_codes.py":
            continue
        literal = re.findall(r"return (?:[1-9]\d*)\b|exit\((?:[1-9]\d*)\b", path.read_text())
        assert not literal, f"{path.name} returns a bare exit status: {literal}"


def test_an_error_exits_with_the_error_code(tmp_path, capsys):
    code = main(
        ["eval", "--data", str(tmp_path), "--model", "no-such-model", "--out", str(tmp_path)]
    )
    assert code == ExitCode.ERROR
    assert "no-such-model" in capsys.readouterr().err
