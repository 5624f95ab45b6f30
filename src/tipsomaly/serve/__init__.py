"""``tipsomaly serve``: the detector as an HTTP service with a web page (FastAPI + uvicorn).

FastAPI, uvicorn and python-multipart are the optional extra ``tipsomaly[serve]``; they are
imported only inside this package, and only by :mod:`.app`, :mod:`.routes` and
:mod:`.schemas`. The rest (:mod:`.config`, :mod:`.batching`, :mod:`.service`) is plain Python
on top of the one prediction pipeline (:class:`~tipsomaly.method.pipeline.Predictor`: a
:class:`~tipsomaly.method.detector.Detector` or an exported graph), testable without a server.

- :mod:`.errors`    what a refused request is answered with (each error has its status).
- :mod:`.config`    :class:`ServeConfig`: limits, batching, token, allowed classes.
- :mod:`.batching`  :class:`MicroBatcher`: one model thread, a bounded queue, micro-batches.
- :mod:`.service`   :class:`Service`: loads the detector in the background, decodes uploads
  and ROI masks (with :func:`tipsomaly.data.images.load_image`'s checks), queues them (each
  image with its ROI), renders the answers.
- :mod:`.app`       :func:`create_app`: the FastAPI app, its lifespan and the request guard
  (token, body size) that runs before any body is read.
- :mod:`.routes`    the endpoints; :mod:`.schemas` their pydantic models; ``static/`` the page.
"""

from __future__ import annotations

from ..errors import MissingExtraError, available

#: import name → distribution name of what ``tipsomaly[serve]`` installs
EXTRA_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart"}


def require_extra() -> None:
    """Raise :class:`MissingExtraError` naming what is missing and the command that installs
    it, unless FastAPI, uvicorn and python-multipart are importable."""
    missing = [dist for mod, dist in EXTRA_MODULES.items() if not available(mod)]
    if missing:
        raise MissingExtraError(
            f"`tipsomaly serve` needs {', '.join(missing)} (not installed): "
            "pip install 'tipsomaly[serve]'"
        )


__all__ = ["EXTRA_MODULES", "MissingExtraError", "require_extra"]
