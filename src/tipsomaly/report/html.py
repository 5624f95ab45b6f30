"""The HTML reports' common parts: one self-contained page per run, its pictures beside it.

A report is ``report.html`` (style and script inlined, data as JSON inside it) and a folder
``report-assets/`` of PNG plots and thumbnails, linked by relative URLs: it opens from the
file system, asks no server and no network. Every file is written whole or not at all
(:mod:`tipsomaly.files`), the pictures first and the page last, so a page never links to a
picture not written yet; writing a report again (a resumed or repeated run) replaces it.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .. import __version__
from ..errors import OutputError
from ..files import atomic_write, atomic_write_text
from .results import printable

__all__ = [
    "ASSETS",
    "REPORT",
    "esc",
    "remove_stale_report",
    "image",
    "json_script",
    "page",
    "settings_list",
    "static",
    "table",
    "url",
    "write_report",
]

REPORT = "report.html"
#: the folder of a report's pictures, beside it
ASSETS = "report-assets"


def esc(text: object) -> str:
    """``text`` for HTML (escaped; file-name bytes that are not UTF-8 shown as ``\\xff``)."""
    return html.escape(printable(text), quote=True)


def url(path: str) -> str:
    """A relative URL of ``path`` (``/``-separated, relative to the report's folder)."""
    return quote(printable(path), safe="/")


def static(name: str) -> str:
    """A file of ``report/static`` as text."""
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def json_script(element_id: str, data: Any) -> str:
    """``data`` as a ``<script type="application/json">`` element (``<`` escaped: no string
    in it can end the element)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def image(path: str, alt: str, width: int | None = None, cls: str = "plot") -> str:
    size = f' width="{width}"' if width else ""
    return f'<img class="{cls}" src="{url(path)}" alt="{esc(alt)}"{size}>'


def number(value: Any, digits: int = 4) -> str:
    """A score for a table cell: ``–`` when missing or not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    """An HTML table of escaped cells (floats with 4 decimals)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(number(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def settings_list(items: Mapping[str, Any]) -> str:
    """A ``<dl>`` of the settings that are set (None left out)."""
    cells = "".join(
        f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items.items() if v not in (None, "")
    )
    return f'<dl class="settings">{cells}</dl>'


def page(title: str, subtitle: str, body: str, script: str = "") -> str:
    """A whole HTML document: the common style, a header, ``body`` and an inline ``script``."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{static('report.css')}</style></head>"
        f"<body><header><h1>{esc(title)}</h1><p>{esc(subtitle)} · tipsomaly {__version__}</p>"
        f"</header><main>{body}</main>"
        + (f"<script>{script}</script>" if script else "")
        + "</body></html>\n"
    )


def remove_stale_report(folder: str | os.PathLike) -> None:
    """Delete ``folder/report.html`` left by an earlier run: a run without a report must not
    leave one that shows other results (its pictures stay, as unlinked files).

    Raises:
        OutputError: it cannot be deleted.
    """
    page = Path(folder) / REPORT
    try:
        page.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(page, exc) from None


def write_report(folder: str | os.PathLike, document: str, assets: Mapping[str, bytes]) -> Path:
    """Write ``assets`` (path relative to ``folder`` → bytes) and then ``folder/report.html``,
    each whole or not at all; returns the page's path.

    Raises:
        OutputError: a file cannot be written (named).
    """
    out = Path(folder)
    for name, data in assets.items():
        path = out / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(path.parent, exc) from None
        atomic_write(path, lambda f, data=data: f.write(data))
    atomic_write_text(out / REPORT, document)
    return out / REPORT
