"""Import hygiene: the layer order of ``src/tipsomaly`` and the modules that load without torch.

The layer rule (lowest first; a module may import its own top-level package and the layers below
it, never a layer above it nor a different package of its own layer)::

    errors → validation, fingerprint, files, resources → tips → data, metrics, identity, records
    → method → report
    → deploy → runners → serve → cli

Every ``import``/``from … import`` statement counts, wherever it is: module level, under
``if TYPE_CHECKING:``, and inside functions (lazy imports still make the lower layer depend on
the higher one at run time). Relative imports are resolved against the importing module's
package. Not seen: names loaded by string through ``importlib`` (only the lazy ``__getattr__``
exports of ``tipsomaly/__init__.py`` and ``tipsomaly/tips/__init__.py`` do that, each within its
own package). ``tipsomaly/__init__.py`` and ``tipsomaly/__main__.py`` are exempt as importers;
importing the root package itself is allowed only for ``__version__`` (its other names are lazy
exports that reach any layer).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT_PACKAGE = "tipsomaly"

#: Top-level modules and packages of tipsomaly, lowest layer first; one tuple per layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("validation", "fingerprint", "files", "resources"),
    ("tips",),
    ("data", "metrics", "identity", "records"),
    ("method",),
    ("report",),
    ("deploy",),
    ("runners",),
    ("serve",),
    ("cli",),
)
RANK: dict[str, int] = {name: rank for rank, names in enumerate(LAYERS) for name in names}
EXEMPT_IMPORTERS = frozenset({ROOT_PACKAGE, f"{ROOT_PACKAGE}.__main__"})
#: Names a lower layer may take from the root package (anything else goes through its lazy
#: exports to an arbitrary layer).
ROOT_NAMES_ALLOWED = frozenset({"__version__"})

#: Modules that must import without loading torch (checked in a fresh interpreter each).
TORCH_FREE = (
    "tipsomaly.data.layouts",
    "tipsomaly.data.meta",
    "tipsomaly.data.inputs",
    "tipsomaly.report.results",
    "tipsomaly.report.tables",
)


def module_name(path: Path, src: Path = SRC) -> tuple[str, bool]:
    """(dotted module name, is a package ``__init__``) of a source file under ``src``."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def imported_modules(source: str, name: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted target) of every ``tipsomaly`` import in ``source``, at any depth.

    ``from X import a, b`` gives ``X.a`` and ``X.b`` when ``X`` is a package root reached by a
    bare relative import (``from . import data``) or the root package itself; otherwise ``X``.
    """
    package = name if is_package else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise ValueError(f"{name}:{node.lineno}: relative import beyond the top")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                if node.module:
                    base = f"{base}.{node.module}"
            else:
                base = node.module or ""
            if node.module is None or base == ROOT_PACKAGE:
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return [(line, t) for line, t in found if t == ROOT_PACKAGE or t.startswith(ROOT_PACKAGE + ".")]


def _top(dotted: str) -> str:
    """``tipsomaly.data.layouts._common`` → ``data``; ``tipsomaly`` → ``""``."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(name: str, imports: list[tuple[int, str]]) -> list[str]:
    """The imports of module ``name`` that break the layer rule, as readable lines."""
    if name in EXEMPT_IMPORTERS:
        return []
    own = _top(name)
    if own not in RANK:
        return [f"{name}: top-level '{own}' is in no layer (add it to LAYERS in {__file__})"]
    out = []
    for line, target in imports:
        top = _top(target)
        if target == ROOT_PACKAGE or top == own:
            continue
        if target.count(".") == 1 and top in ROOT_NAMES_ALLOWED:
            continue
        if top not in RANK:
            out.append(f"{name}:{line} imports {target}: not a module of a known layer")
        elif RANK[top] > RANK[own]:
            out.append(f"{name}:{line} imports {target}: '{own}' is below '{top}'")
        elif RANK[top] == RANK[own]:
            out.append(f"{name}:{line} imports {target}: '{own}' and '{top}' are peers")
    return out


def scan(src: Path = SRC) -> tuple[list[str], int]:
    """(every violation, number of modules read) under ``src/tipsomaly``."""
    problems: list[str] = []
    files = sorted((src / ROOT_PACKAGE).rglob("*.py"))
    for path in files:
        name, is_package = module_name(path, src)
        imports = imported_modules(path.read_text(encoding="utf-8"), name, is_package)
        problems += violations(name, imports)
    return problems, len(files)


def test_every_import_points_down_the_layers():
    problems, count = scan()
    assert count > 50  # the walk found the package
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_every_top_level_module_has_a_layer():
    package = SRC / ROOT_PACKAGE
    tops = {p.stem for p in package.glob("*.py")} | {p.parent.name for p in package.glob("*/*.py")}
    tops = {t for t in tops if not t.startswith("__")}
    assert tops - set(RANK) == set(), "add these to LAYERS"


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_the_scan_catches_upward_peer_lazy_and_type_checking_imports(tmp_path):
    """The rule fails on a tree that breaks it, whatever form the import takes."""
    _write(tmp_path, "tipsomaly/__init__.py", "from .cli import main\n")  # exempt
    _write(
        tmp_path,
        "tipsomaly/data/x.py",
        "from typing import TYPE_CHECKING\n"
        "from ..errors import E\n"  # down: fine
        "from . import meta\n"  # own package: fine
        "from .. import __version__\n"  # allowed root name
        "from ..metrics import auroc\n"  # peer
        "if TYPE_CHECKING:\n"
        "    from ..method.detector import Detector\n"  # up, type-only
        "def f():\n"
        "    import tipsomaly.runners.predict\n"  # up, lazy
        "    from tipsomaly import Detector\n",  # root lazy export
    )
    _write(tmp_path, "tipsomaly/data/sub/y.py", "from ...report import tables\n")  # up, 2 levels
    _write(tmp_path, "tipsomaly/plugins.py", "")  # no layer
    problems, count = scan(tmp_path)
    assert count == 4
    text = "\n".join(problems)
    assert "tipsomaly.data.x:5 imports tipsomaly.metrics: 'data' and 'metrics' are peers" in text
    assert "tipsomaly.data.x:7 imports tipsomaly.method.detector: 'data' is below 'method'" in text
    assert "tipsomaly.data.x:9 imports tipsomaly.runners.predict: 'data' is below 'runners'" in text
    assert "tipsomaly.data.x:10 imports tipsomaly.Detector: not a module of a known layer" in text
    assert "tipsomaly.data.sub.y:1 imports tipsomaly.report: 'data' is below 'report'" in text
    assert "tipsomaly.plugins: top-level 'plugins' is in no layer" in text
    assert len(problems) == 6


@pytest.mark.parametrize("module", TORCH_FREE)
def test_light_modules_import_without_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False", f"importing {module} loads torch"


def test_the_torch_check_can_fail():
    """The same probe reports True for a module that does import torch."""
    code = "import sys, tipsomaly.data.dataset; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "True"


# -- no module imports another that imports it back ---------------------------------------------
def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module → the modules of ``src/tipsomaly`` it imports (any depth of the statement; a
    package's ``__init__`` counts as the package), packages of a module it lives in left out."""
    modules = {}
    for path in sorted((src / ROOT_PACKAGE).rglob("*.py")):
        name, is_package = module_name(path, src)
        modules[name] = (path, is_package)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        targets = set()
        for _, target in imported_modules(path.read_text(encoding="utf-8"), name, is_package):
            while target and target not in modules:  # `from x import name`: the module x
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    """No two modules of src/ import each other, directly or around a loop (lazy imports
    count: they are dependencies at run time)."""
    graph = import_graph()
    assert len(graph) > 50
    assert cycles(graph) == [], "modules that import each other (move what one needs elsewhere)"


def test_the_cycle_check_can_fail():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_cli_verb_imports_another():
    """Each verb module is a shell over library calls; what verbs share is in cli/options."""
    verbs = {"predict", "fit", "serve", "export", "evaluate", "train", "data", "weights"}
    graph = import_graph()
    bad = [
        f"{a} imports {b}"
        for a in sorted(graph)
        for b in sorted(graph[a])
        if a.startswith("tipsomaly.cli.")
        and b.startswith("tipsomaly.cli.")
        and a.rsplit(".", 1)[1] in verbs
        and b.rsplit(".", 1)[1] in verbs
    ]
    assert not bad, bad


def test_no_source_module_is_over_600_lines():
    """A module past ~600 lines holds more than one concept (split it)."""
    long = {
        module_name(p)[0]: n
        for p in (SRC / ROOT_PACKAGE).rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600
    }
    assert not long, long


def module_loggers(source: str) -> list[str]:
    """Module-level ``NAME = logging.getLogger(ARG)`` statements, as ``NAME = getLogger(ARG)``."""
    found = []
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and node.value.func.attr == "getLogger"
        ):
            targets = ", ".join(ast.unparse(t) for t in node.targets)
            args = ", ".join(ast.unparse(a) for a in node.value.args)
            found.append(f"{targets} = getLogger({args})")
    return found


def test_module_loggers_are_named_logger_after_the_module():
    """One convention: ``logger = logging.getLogger(__name__)`` (children of ``tipsomaly``)."""
    bad, count = [], 0
    for path in sorted((SRC / ROOT_PACKAGE).rglob("*.py")):
        for found in module_loggers(path.read_text(encoding="utf-8")):
            count += 1
            if found != "logger = getLogger(__name__)":
                bad.append(f"{module_name(path)[0]}: {found}")
    assert count > 15  # the walk found the loggers
    assert not bad, "use logger = logging.getLogger(__name__):\n" + "\n".join(bad)


def test_the_logger_check_can_fail():
    source = (
        "import logging\n"
        "log = logging.getLogger('tipsomaly.x')\n"
        "logger = logging.getLogger(__name__)\n"
        "def f():\n"
        "    other = logging.getLogger('ignored: not at module level')\n"
    )
    assert module_loggers(source) == [
        "log = getLogger('tipsomaly.x')",
        "logger = getLogger(__name__)",
    ]


def test_cli_logging_reaches_every_module_logger():
    """The CLI sets the level of the parent ``tipsomaly`` logger; each module logger inherits it."""
    import argparse
    import logging

    from tipsomaly.cli.main import ALWAYS_QUIET, PACKAGE_LOGGER, THIRD_PARTY, _setup_logging

    touched = [logging.getLogger(n) for n in ("", PACKAGE_LOGGER, *THIRD_PARTY, *ALWAYS_QUIET)]
    saved = [(lg, lg.level) for lg in touched]
    try:
        _setup_logging(argparse.Namespace(quiet=False, verbose=1))
        assert logging.getLogger("tipsomaly.data.layouts._mvtec").isEnabledFor(logging.DEBUG)
        _setup_logging(argparse.Namespace(quiet=True, verbose=0))
        assert not logging.getLogger("tipsomaly.metrics._arrays").isEnabledFor(logging.INFO)
    finally:
        for lg, level in saved:
            lg.setLevel(level)
