"""OpenVINO's CPU plugin swaps the calling thread's signal stack when a Core creates it and
puts back the one it found when it is destroyed; Cores destroyed in the order they were made
left a freed stack behind, and the next Python signal handler crashed the process (SIGSEGV:
it killed the test run twice). The engines share one Core (``shared_core``); this runs the
sequence that crashed in a child process and checks it survives a handled signal."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("openvino")

SCRIPT = textwrap.dedent(
    """
    import gc, os, signal, sys
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    from tipsomaly.deploy.inferencers.openvino import OpenVinoRunner

    def graph(path):
        x = ops.parameter([1, 3, 4, 4], np.float32, name="images")
        ov.save_model(ov.Model([ops.relu(x)], [x]), path)
        return path

    first = OpenVinoRunner(graph(sys.argv[1] + "/a.xml"))
    second = OpenVinoRunner(graph(sys.argv[1] + "/b.xml"))
    out = second(np.ones((1, 3, 4, 4), np.float32))
    assert float(next(iter(out.values())).sum()) == 48.0
    del first; gc.collect()  # in the order they were made: the order that crashed
    del second; gc.collect()
    signal.signal(signal.SIGCHLD, lambda *args: None)
    for _ in range(20):
        os.kill(os.getpid(), signal.SIGCHLD)
    print("survived")
    """
)


def test_engines_made_and_dropped_in_order_leave_a_working_signal_stack(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.strip().endswith("survived")
