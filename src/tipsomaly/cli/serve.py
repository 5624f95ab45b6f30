"""``tipsomaly serve --model M [--profile DIR...]``: an HTTP service and inspection page.

Parses and checks the options (before anything loads), binds the socket (so a busy port is one
line, exit 1), then runs :func:`tipsomaly.serve.app.create_app` under uvicorn. The detector loads
in the background; SIGTERM or Ctrl-C stop accepting connections, let the requests in flight
finish, answer what is queued and exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import InvalidOptionError
from ..serve.config import (
    DEFAULT_HOST,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_PORT,
    RECORD_MODES,
    TOKEN_ENV,
)
from ..validation import float_type, int_type
from .exit_codes import ExitCode
from .options import (
    DEFAULTS,
    RECORDED,
    HelpFormatter,
    add_settings,
    check_mode,
    config_from_args,
    given_settings,
    non_empty,
    non_negative_float,
    open_predictor,
    positive_int,
    resolved,
)

logger = logging.getLogger(__name__)

port_int = int_type(0, 65535)
positive_mb = float_type(0, low_open=True)

_EPILOG = f"""\
endpoints:
  GET  /             the inspection page: upload images, pick the class or profile, see
                     score, decision, heat map and defect boxes side by side; a
                     display-threshold slider
  GET  /health       200 {{"status": "ready"}} once the model is loaded; 503 while loading
  GET  /v1/info      identity, model, image size, dtype, device, engine, prompts, tiling,
                     ROI, profiles, limits, counters
  GET  /metrics      Prometheus metrics (requests, latency, batch sizes, queue, decisions,
                     flag rate, records, profile versions)
  POST /v1/profiles/reload  switch to the profile folders' current versions (or SIGHUP);
                     in-flight batches finish on the old ones
  with --db: GET /v1/records (filters outcome, unreviewed, class_name, station, since,
                     until; before_id pages), GET /v1/records/ID[/image|/overlay],
                     POST /v1/records/ID/review {{"verdict", "reviewer", "class"}}, GET
                     /v1/monitor (drift per class); the page's review view
  POST /v1/predict   multipart: one or more `file` parts, `class_name` (default: the one
                     profile's class), optional `threshold` (image score, [0, 2]), optional
                     `roi` (a mask image for every file; default: --roi), `return_map`
                     none|png|npy -> JSON: per file image_score, score_cls1, score_cls2,
                     mode, threshold, is_anomalous, defects (with a pixel threshold), tiles,
                     the map if asked; timing
  curl -F file=@part.png -F class_name=tile http://127.0.0.1:8000/v1/predict
the pipeline is predict's: a tiled profile, an ROI mask, an export folder as --model give the
same scores, maps, decisions and defects as `tipsomaly predict` with those settings.
batching:
  concurrent requests share forward passes: up to --batch-size images, or what arrived
  within --max-wait-ms of the oldest; one thread runs the model. Over --max-queue waiting
  images, requests get 503 with Retry-After.
safety:
  binds {DEFAULT_HOST} unless --host says otherwise; with --token (or ${TOKEN_ENV},
  which keeps it out of the process list) every /v1/ request needs 'Authorization: Bearer
  TOKEN' (401 without). Bodies over --max-upload-mb: 413; unreadable images and images
  over --max-pixels: 422 naming the file and the problem. SIGTERM / Ctrl-C: stop accepting,
  finish the requests in flight (at most --drain-timeout seconds), exit 0.
exit status: 0 stopped by SIGTERM or Ctrl-C, 1 option errors, a busy port or a model that
cannot be loaded (one line)."""


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run an HTTP service and web page that score uploaded images (micro-batched)",
        description="Serve the detector over HTTP: a JSON API for cameras and MES, a page for "
        "engineers. Needs the extra: pip install 'tipsomaly[serve]'.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_settings(
        p,
        defaults=DEFAULTS,
        recorded_note=RECORDED,
        batch_size={"help": "most images per forward pass (a micro-batch of concurrent requests)"},
        roi={
            "help": "region-of-interest mask for every request without its own `roi` part "
            "(white = inspect)"
        },
    )
    p.add_argument(
        "--classes",
        nargs="+",
        type=non_empty,
        action="extend",
        metavar="NAME",
        help="class names requests may use (their text embeddings are computed at start); "
        "default: any name without --profile, only the profiles' classes with it",
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on; 0.0.0.0 = every interface (then set a token)",
    )
    p.add_argument("--port", type=port_int, default=DEFAULT_PORT, help="0: any free port")
    p.add_argument(
        "--token",
        help=f"bearer token every /v1/ request must carry (default: ${TOKEN_ENV}, else none)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=non_negative_float,
        default=DEFAULT_MAX_WAIT_MS,
        metavar="MS",
        help="how long the oldest queued image waits for its batch to fill",
    )
    p.add_argument(
        "--max-queue",
        type=positive_int,
        default=DEFAULT_MAX_QUEUE,
        metavar="N",
        help="images waiting for the model before requests get 503 + Retry-After",
    )
    p.add_argument(
        "--max-upload-mb",
        type=positive_mb,
        default=DEFAULT_MAX_UPLOAD_MB,
        metavar="MB",
        help="largest request body in MiB (413 beyond)",
    )
    p.add_argument(
        "--max-files",
        type=positive_int,
        default=DEFAULT_MAX_FILES,
        metavar="N",
        help="most files per request (413 beyond)",
    )
    p.add_argument(
        "--drain-timeout",
        type=non_negative_float,
        default=60.0,
        metavar="S",
        help="on SIGTERM, seconds the requests in flight may take to finish",
    )
    add_record_options(p)
    p.set_defaults(func=cmd_serve)


def add_record_options(p: argparse.ArgumentParser) -> None:
    """``--db``, ``--keep-images``, ``--records`` (serve's; the records extra)."""
    g = p.add_argument_group("records (pip install 'tipsomaly[records]')")
    g.add_argument(
        "--db",
        metavar="URL",
        help="store one record per decision: a SQLite file path, or postgresql://USER@HOST/DB "
        "for several replicas; enables GET /v1/records, reviews and /v1/monitor",
    )
    g.add_argument(
        "--keep-images",
        metavar="DIR",
        help="keep each recorded image and its map in DIR, named by SHA-256 (repeats are "
        "stored once); the review page shows them, `profile update --from-db` reads them",
    )
    g.add_argument(
        "--records",
        choices=RECORD_MODES,
        default="strict",
        help="strict: a decision is answered only after its record is committed (503 when the "
        "database cannot take it); best-effort: answered anyway, the failure logged and "
        'counted (tipsomaly_records_total{result="failed"})',
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Run ``serve``: check options, bind, serve until SIGTERM / Ctrl-C."""
    from ..serve import require_extra

    require_extra()  # one line naming the extra, before anything else
    with _graceful_signals() as stop:  # from here on, SIGTERM means "drain, exit 0"
        return _serve(args, stop)


def _serve(args: argparse.Namespace, stop: _Stop) -> int:
    check_mode(args, "serve")
    config = resolved(config_from_args(args, defaults=DEFAULTS))
    profile_classes: list[str] = []
    if config.profiles:
        from ..method.profile import read_record

        profile_classes = [read_record(folder)["class_name"] for folder in config.profiles]
    from ..serve.config import ServeConfig

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    serve_config = ServeConfig(
        batch_size=config.batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_upload_bytes=max(1, int(args.max_upload_mb * 2**20)),
        max_files=args.max_files,
        token=token,
        classes=tuple(args.classes or ()),
        max_pixels=config.max_pixels,
        drain_timeout_s=args.drain_timeout,
        db=args.db,
        keep_images=args.keep_images,
        records=args.records,
        settings=config,
    )
    sock = _listen(args.host, args.port)
    given = given_settings(args)

    def load() -> Any:
        one = args.classes[0] if args.classes and len(args.classes) == 1 else None
        return open_predictor(config, given, one)  # --engine: the export of that class

    return _run(args, serve_config, load, sock, profile_classes, stop)


def _run(
    args: argparse.Namespace,
    config: Any,
    load: Any,
    sock: socket.socket,
    profile_classes: list[str],
    stop: _Stop,
) -> int:
    with sock:
        import uvicorn

        from ..serve.app import create_app

        failed: list[BaseException] = []

        def on_fatal(exc: BaseException) -> None:
            failed.append(exc)
            stop.now()

        app = create_app(config, load, on_fatal=on_fatal)
        stop.server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_config=None,  # our logging (cli/main.py); uvicorn's loggers inherit it
                access_log=args.verbose >= 2,
                timeout_graceful_shutdown=config.drain_timeout_s,
                lifespan="on",
            )
        )
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        if not _is_loopback(args.host) and config.token is None:
            logger.warning(
                "listening on %s without a token: anyone who can reach it may use it (set "
                "--token or $%s)",
                args.host,
                TOKEN_ENV,
            )
        classes = ", ".join(dict.fromkeys([*config.classes, *profile_classes])) or "any"
        print(
            f"tipsomaly serve: http://{shown}:{port}/ (model loading in the background; GET "
            f"/health answers 200 when ready; classes: {classes}); stop with Ctrl-C or SIGTERM",
            flush=True,
        )
        if stop.requested:  # a signal while starting: start and stop at once
            stop.now()
        with _reload_on_sighup(app.state.service):
            stop.server.run(sockets=[sock])
    if failed:
        exc = failed[0]
        print(f"tipsomaly: error: the model could not be loaded: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    print("tipsomaly serve: stopped (requests in flight were answered)", flush=True)
    return ExitCode.OK


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; a one-line error when that is impossible."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidOptionError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise InvalidOptionError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})"
        ) from None
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _reload_on_sighup(service: Any) -> Iterator[None]:
    """While serving, SIGHUP reloads the profiles (as POST /v1/profiles/reload), in a thread:
    a signal handler must not wait for the model."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        yield
        return

    def reload() -> None:
        with contextlib.suppress(Exception):  # logged by the service; the server goes on
            service.reload()

    previous = signal.signal(
        signal.SIGHUP, lambda signum, frame: threading.Thread(target=reload, daemon=True).start()
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


class _Stop:
    """Whether a stop was asked for, and the server to stop (once there is one)."""

    def __init__(self) -> None:
        self.requested = False
        self.server: Any = None

    def now(self) -> None:
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True


@contextlib.contextmanager
def _graceful_signals() -> Iterator[_Stop]:
    """While serving, SIGTERM and SIGINT mean "drain and exit 0".

    uvicorn installs its own handlers while it runs, and afterwards restores the previous
    ones and raises the signal again; these handlers are those previous ones: before uvicorn
    takes over they ask the server to stop as soon as it starts, afterwards they do nothing,
    so the process ends with status 0 instead of being killed by the re-raised SIGTERM.
    """
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals reach the main thread only; uvicorn handles none here either
        return
    saved = {
        sig: signal.signal(sig, lambda signum, frame: stop.now())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield stop
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
