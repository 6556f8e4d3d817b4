"""The package as pip installs it from a wheel (not the editable checkout the other tests use): every file it
reads at run time is inside it."""
import json
import os
import subprocess
import sys

from conftest import ROOT

CHECK = """
import json, pathlib, flightllm
from flightllm import boards
from flightllm.hw import flow
from flightllm.sim import rtl_device
b = boards.load("sim")
print(json.dumps({"file": flightllm.__file__, "boards": boards.names(), "harness": rtl_device.HARNESS.is_file(),
                  "rtl_key": rtl_device.build_key(b, False), "design_key": flow.design_key(b)}))
"""


def test_wheel_installs_everything_the_package_reads(tmp_path):
    whl, target = tmp_path / "wheel", tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", whl, ROOT],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (w,) = whl.glob("flightllm-*.whl")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, w],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    from flightllm import boards
    from flightllm.hw import flow
    from flightllm.sim import rtl_device

    b = boards.load("sim")
    assert got["file"].startswith(str(target))                # the installed copy, not the checkout
    assert got["boards"] == boards.names() and got["harness"]
    # the build keys hash the same sources: the installed package builds (and caches) what the checkout does
    assert (got["rtl_key"], got["design_key"]) == (rtl_device.build_key(b, False), flow.design_key(b))
    # and it runs: the CLI of the installed copy, on the functional simulator
    r = subprocess.run([sys.executable, "-m", "flightllm", "kernel", "mv", "--rows", "64", "--cols", "64",
                        "--json"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["bit_exact"], r.stderr[-2000:]
