"""The public API at the top of the package: lazy, complete, and free of torch until used."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import tipsomaly
from tipsomaly.errors import TipsomalyError


def _in_fresh_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_importing_the_package_and_the_cli_does_not_import_torch():
    code = (
        "import sys, tipsomaly, tipsomaly.cli, tipsomaly.cli.main, tipsomaly.validation\n"
        "tipsomaly.cli.main.build_parser()\n"
        "names = dir(tipsomaly)\n"
        "assert 'Detector' in names and 'run_predict' in names, names\n"
        "print('torch' in sys.modules)"
    )
    assert _in_fresh_python(code) == "False"


def test_first_use_imports_on_demand():
    code = (
        "import sys, tipsomaly\n"
        "from tipsomaly import TipsomalyError, InvalidOptionError\n"
        "print('torch' in sys.modules)\n"
        "from tipsomaly import Detector\n"
        "print('torch' in sys.modules, Detector.__module__)"
    )
    assert _in_fresh_python(code).splitlines() == ["False", "True tipsomaly.method.detector"]


def test_the_documented_entry_points_come_from_the_top():
    from tipsomaly import Detector, evaluate_datasets, load_pixel_prompts, run_predict, train
    from tipsomaly.method.detector import Detector as Defined
    from tipsomaly.runners.evaluate import evaluate_datasets as defined_eval
    from tipsomaly.runners.predict import run_predict as defined_predict

    assert Detector is Defined and run_predict is defined_predict
    assert evaluate_datasets is defined_eval
    assert callable(load_pixel_prompts) and callable(train)


@pytest.mark.parametrize("name", sorted(set(tipsomaly.__all__) - {"__version__"}))
def test_every_public_name_is_the_object_its_module_defines(name):
    module = importlib.import_module(f"tipsomaly.{tipsomaly._EXPORTS[name]}")
    assert getattr(tipsomaly, name) is getattr(module, name)
    assert name in dir(tipsomaly)


def test_public_errors_are_tipsomaly_errors():
    errors = [n for n in tipsomaly.__all__ if n.endswith("Error")]
    assert {"TipsomalyError", "InvalidOptionError", "OutputError", "ConfigError"} <= set(errors)
    for name in errors:
        assert issubclass(getattr(tipsomaly, name), TipsomalyError), name


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Detektor'"):
        tipsomaly.Detektor  # noqa: B018
    assert not hasattr(tipsomaly, "_no_such_thing")
