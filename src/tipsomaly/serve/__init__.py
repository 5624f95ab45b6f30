"""``tipsomaly serve``: the detector as an HTTP service with a web page (FastAPI + uvicorn).

FastAPI, uvicorn, python-multipart and prometheus-client are the optional extra
``tipsomaly[serve]``; they are imported only inside this package: FastAPI only by :mod:`.app`,
:mod:`.routes`, :mod:`.records_routes` and :mod:`.schemas`, prometheus-client only by
:mod:`.monitoring`. With ``--db``, :mod:`.recording` writes one record per decision through
:mod:`tipsomaly.records` (the ``records`` extra) and :mod:`.profiles` says which profile version
decided it (and reloads them). The rest (:mod:`.config`, :mod:`.batching`, :mod:`.service`) is
plain Python on top of the one prediction pipeline (:class:`~tipsomaly.method.pipeline.Predictor`: a
:class:`~tipsomaly.method.detector.Detector` or an exported graph), testable without a server.
"""

from __future__ import annotations

from ..errors import MissingExtraError, available

#: import name → distribution name of what ``tipsomaly[serve]`` installs
EXTRA_MODULES = {
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "multipart": "python-multipart",
    "prometheus_client": "prometheus-client",
}


def require_extra() -> None:
    """Raise :class:`MissingExtraError` naming what is missing and the command that installs
    it, unless FastAPI, uvicorn, python-multipart and prometheus-client are importable."""
    missing = [dist for mod, dist in EXTRA_MODULES.items() if not available(mod)]
    if missing:
        raise MissingExtraError(
            f"`tipsomaly serve` needs {', '.join(missing)} (not installed): "
            "pip install 'tipsomaly[serve]'"
        )


__all__ = ["EXTRA_MODULES", "MissingExtraError", "require_extra"]
