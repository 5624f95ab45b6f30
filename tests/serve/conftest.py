"""Fixtures of the ``tipsomaly serve`` tests: the tiny golden model, images of two classes, a
profile of one of them, what ``tipsomaly predict`` answers for every image, and a real server
(``tipsomaly serve`` in a subprocess on a free port of 127.0.0.1; helpers in serve_helpers.py).

``tile`` has a profile (its images are scored fused, with a calibrated threshold); ``screw``
has none (zero-shot): a server given both serves mixed batches, and each answer must equal the
CLI's, which scores ``tile`` with ``--profile`` and ``screw`` without.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serve_helpers import (
    SIZE,
    TOKEN,
    ServeData,
    Server,
    cli_rows,
    start_server,
    write_images,
)

from synthetic import tiny_model_dir
from tipsomaly.cli.main import main


@pytest.fixture(scope="session")
def serve_data(tmp_path_factory) -> ServeData:
    root = tmp_path_factory.mktemp("serve")
    model = tiny_model_dir(root / "model")
    write_images(root / "refs", 6, seed=1)
    profile = root / "profile"
    base = ["--model", str(model), "--image-size", str(SIZE), "-q"]
    code = main(["fit", str(root / "refs"), "--class-name", "tile", "--out", str(profile),
                 "--false-alarm-rate", "0.2", *base])  # fmt: skip
    assert code == 0
    tile = write_images(root / "tile", 4, seed=2) + write_images(root / "dent", 3, 3, defect=True)
    screw = write_images(root / "screw", 5, seed=4)
    data = ServeData(root, model, profile, {"tile": tile, "screw": screw})
    for cls, files, extra in (("tile", tile, ["--profile", str(profile)]), ("screw", screw, [])):
        out = root / f"cli-{cls}"
        args = ["predict", *map(str, files), "--class-name", cls, "--out", str(out)]
        assert main([*args, *base, *extra]) == 0
        data.cli.update(cli_rows(out))
    assert len(data.cli) == len(tile) + len(screw)
    return data


@pytest.fixture(scope="session")
def _servers(serve_data) -> Iterator[dict[str, Server]]:
    """Both real servers, started together (each takes seconds to import torch and load):

    - ``main``: token from the environment, 1 MiB uploads, batches of up to 8;
    - ``drain``: no token, batches wait up to 1.5 s to fill (so that a lone request is surely
      in flight when the SIGTERM test signals it).
    """
    servers = {
        "main": start_server(
            serve_data,
            "--batch-size", "8", "--max-wait-ms", "20", "--max-upload-mb", "1",
            env={"TIPSOMALY_SERVE_TOKEN": TOKEN},
        ),
        "drain": start_server(serve_data, "--batch-size", "8", "--max-wait-ms", "1500"),
    }  # fmt: skip
    try:
        yield servers
    finally:
        for srv in servers.values():
            srv.stop()


@pytest.fixture(scope="session")
def server(_servers) -> Server:
    _servers["main"].wait_ready()
    return _servers["main"]


@pytest.fixture(scope="session")
def drain_server(_servers) -> Server:
    _servers["drain"].wait_ready()
    return _servers["drain"]
