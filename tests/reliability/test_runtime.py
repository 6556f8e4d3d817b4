"""Runtime robustness: Ctrl-C mid-generation, context overflow, and the device left reusable."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from flightllm.errors import FlightLLMError
from flightllm.host.runtime import Runtime


def test_ctrl_c_during_generation_is_clean(tmp_path):
    env = dict(os.environ, FLIGHTLLM_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "flightllm", "generate", "-p", "Once upon a time", "-n", "200"]
    # SIGINT back to its default in the child: a shell's background job (CI scripts, `cmd &`) starts with it
    # ignored, and Python then installs no KeyboardInterrupt handler, so Ctrl-C would not reach the CLI at all
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = p.stdout.read(1)                       # streaming has started: we are mid-generation
    assert first
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130
    assert err.strip().splitlines()[-1] == "flightllm: interrupted" and "Traceback" not in err
    again = subprocess.run(cmd[:-1] + ["3"], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and again.stdout.strip()


def test_interrupted_run_leaves_the_simulator_reusable(artifact):
    rt = Runtime(artifact)
    ref, _ = rt.forward([1, 2, 3], 0)
    sim = rt.dev.sim

    def interrupt(i, pc, ins, s):
        if i == 50:
            raise KeyboardInterrupt

    rt.dev.write_mem(artifact.header["io"]["tokens"], np.array([1, 2, 3], "<i4"))
    with pytest.raises(KeyboardInterrupt):
        sim.run(artifact.program("fwd1")["addr"], 0, trace=interrupt)
    again, _ = rt.forward([1, 2, 3], 0)            # a rerun from the same inputs gives the same bits
    assert np.array_equal(again, ref)


def test_context_overflow_is_refused_before_running(artifact):
    rt = Runtime(artifact)
    ctx = artifact.header["ctx"]
    with pytest.raises(FlightLLMError, match="exceed the compiled context length"):
        rt.forward([1], ctx)
    with pytest.raises(FlightLLMError, match="token id out of range"):
        rt.forward([49152], 0)


def test_runtime_refuses_another_board_or_a_changed_board_file(artifact, tmp_path):
    """The programs were checked against the compile-time board's buffers: a Runtime built on another board, or
    on the same board's file changed since (same name, other configuration), is refused before any device opens."""
    from flightllm import boards

    sim = boards.load("sim")
    assert Runtime(artifact, board=sim).board is sim         # the same file, freshly loaded: accepted
    changed = tmp_path / "sim.toml"
    changed.write_text(sim.path.read_text().replace("abuf_words = 262144", "abuf_words = 131072"))
    for board, msg in ((boards.load("u280"), "compiled for board sim, not u280"),
                       (boards.load(str(changed)), "another configuration of board sim")):
        with pytest.raises(FlightLLMError, match=msg):
            Runtime(artifact, board=board)
