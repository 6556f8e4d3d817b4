"""The on-disk cache keeps a few entries per group (flightllm/cache.py): artifacts, Verilator builds, Verilog."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from flightllm import cache


def _entries(d, names, dirs=()):
    t = time.time() - 1000
    for i, n in enumerate(names):
        p = d / n
        if n in dirs:
            p.mkdir()
            (p / "lib.so").write_bytes(b"x")
        else:
            p.write_bytes(b"x")
        os.utime(p, (t + i, t + i))          # in the order given: the last is the most recent
    return [d / n for n in names]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_prune_keeps_the_most_recent_of_a_group_only(tmp_path, monkeypatch):
    monkeypatch.delenv("FLIGHTLLM_CACHE_KEEP", raising=False)
    names = ["sim-" + k for k in ("0a1", "0a2", "0a3", "0a4", "0a5")]
    others = ["sim-2ch-0b1", "sim-2ch-0b2", "kv260-0c1", f"sim-0a6.tmp{os.getpid()}", "sim-synth-0d1"]
    _entries(tmp_path, names + others, dirs=set(names[:2]) | {"sim-2ch-0b1"})
    new = tmp_path / "sim-0a9"
    new.mkdir()
    gone = cache.prune(new, "sim-", keep=3)
    assert sorted(p.name for p in gone) == names[:3]                 # folders and files alike
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(names[3:] + others + ["sim-0a9"])          # other boards and in-progress builds stay


def test_prune_removes_what_a_dead_process_left(tmp_path):
    """A build or save interrupted by Ctrl-C or a kill leaves its .tmp<pid> entry: the group's next prune removes
    it once that process is gone (even with FLIGHTLLM_CACHE_KEEP=0), and nothing of another group or a live one."""
    dead = _dead_pid()
    names = [f"sim-0a1.tmp{dead}", f"sim-0a2.tmp{os.getpid()}", f"sim-2ch-0b1.tmp{dead}",
             f"m.Q4_1.sim.0c1.flm.tmp{dead}", "sim-0a3"]
    _entries(tmp_path, names, dirs={names[0], names[2]})
    assert [p.name for p in cache.prune(tmp_path / "sim-0a3", "sim-", keep=0)] == [names[0]]
    assert [p.name for p in cache.prune(tmp_path / "m.Q4_1.sim.0c2.flm", "m.Q4_1.sim.")] == [names[3]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[1], names[2], "sim-0a3"])


def test_touch_orders_the_pruning(tmp_path):
    a, b, c = _entries(tmp_path, ["m.Q4_1.sim.aa.flm", "m.Q4_1.sim.bb.flm", "m.Q4_1.sim.cc.flm"])
    cache.touch(a)                           # used just now: the oldest is b
    gone = cache.prune(c, "m.Q4_1.sim.", keep=2)
    assert gone == [b] and a.exists() and c.exists()


def test_keep_from_the_environment(tmp_path, monkeypatch):
    _entries(tmp_path, ["u280-synth-01", "u280-synth-02"])
    new = tmp_path / "u280-synth-03"
    new.write_bytes(b"x")
    monkeypatch.setenv("FLIGHTLLM_CACHE_KEEP", "0")                  # 0: keep everything
    assert cache.prune(new, "u280-synth-") == [] and len(list(tmp_path.iterdir())) == 3
    monkeypatch.setenv("FLIGHTLLM_CACHE_KEEP", "1")
    assert len(cache.prune(new, "u280-synth-")) == 2 and list(tmp_path.iterdir()) == [new]
    monkeypatch.setenv("FLIGHTLLM_CACHE_KEEP", "many")              # not a number: the default
    assert cache.keep_count() == cache.KEEP


def test_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FLIGHTLLM_CACHE", str(tmp_path))
    from flightllm.sim import rtl_device

    assert cache.root() == tmp_path
    assert rtl_device.cache_root() == tmp_path / "rtl"


def test_compiled_artifacts_are_pruned(tmp_path, monkeypatch):
    """Two contexts of one model on one board with FLIGHTLLM_CACHE_KEEP=1: the second compile replaces the first,
    and a hit is answered from the cache."""
    from flightllm.compiler.compile import compile_cached

    monkeypatch.setenv("FLIGHTLLM_CACHE", str(tmp_path))
    monkeypatch.setenv("FLIGHTLLM_CACHE_KEEP", "1")
    compile_cached("smollm2", "sim", ctx=64)
    first = sorted(tmp_path.glob("*.flm"))
    assert len(first) == 1
    compile_cached("smollm2", "sim", ctx=128)
    second = sorted(tmp_path.glob("*.flm"))
    assert len(second) == 1 and second != first
    t = second[0].stat().st_mtime_ns
    compile_cached("smollm2", "sim", ctx=128)
    assert sorted(tmp_path.glob("*.flm")) == second and second[0].stat().st_mtime_ns >= t


def test_rtl_build_keeps_the_library_not_the_objects():
    """A Verilator build keeps its library and Verilog, not its ~200 MB of objects (the build the RTL tests use)."""
    import pytest

    from flightllm import boards
    from flightllm.sim import rtl_device

    try:
        rtl_device.verilator_bin()
    except rtl_device.RtlError:             # pragma: no cover - only without Verilator
        pytest.skip("Verilator not installed")
    lib = rtl_device.build(boards.load("sim"))
    assert lib.is_file() and (lib.parent / "flightllm_top.v").is_file()
    assert not (lib.parent / "obj").exists()


def test_rtl_build_key_follows_flags_and_verilator_release(monkeypatch):
    """A cached Verilator build is one of this recipe: changing the harness's compiler flags or the Verilator
    release names another build (a stale library is never reused)."""
    from flightllm import boards
    from flightllm.sim import rtl_device

    b = boards.load("sim")
    k0 = rtl_device.build_key(b, False)
    assert rtl_device.build_key(b, False) == k0 and rtl_device.build_key(b, True) != k0
    monkeypatch.setattr(rtl_device, "CXXFLAGS", rtl_device.CXXFLAGS + " -g")
    k1 = rtl_device.build_key(b, False)
    assert k1 != k0
    monkeypatch.setattr(rtl_device, "_verilator_release", lambda: "0.0.0")
    assert rtl_device.build_key(b, False) not in (k0, k1)


def test_rtl_build_interrupted_or_failed_leaves_no_objects(tmp_path, monkeypatch):
    """Ctrl-C during a build leaves nothing in the cache; a failed Verilator run keeps the Verilog and a
    build.log (named in the one-line error) for a look, not its objects. Verilator and the Verilog generator are
    stand-ins here: what is checked is the cache's bookkeeping around them."""
    import pytest

    from flightllm import boards
    from flightllm.sim import rtl_device

    monkeypatch.setenv("FLIGHTLLM_CACHE", str(tmp_path))

    def interrupted(board, out):
        (out / "flightllm_top.v").write_text("module flightllm_top; endmodule\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(rtl_device, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rtl_device.build(boards.load("sim"))
    assert list(rtl_device.cache_root().iterdir()) == []

    def verilog(board, out):
        (out / "flightllm_top.v").write_text("module flightllm_top; endmodule\n")
        return out / "flightllm_top.v"

    fake = tmp_path / "verilator"
    fake.write_text("#!/bin/sh\nmkdir -p \"$(echo \"$@\" | sed 's/.*--Mdir \\([^ ]*\\).*/\\1/')\"\n"
                    "echo '%Error: boom' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(rtl_device, "generate", verilog)
    monkeypatch.setattr(rtl_device, "verilator_bin", lambda: str(fake))
    with pytest.raises(rtl_device.RtlError, match=r"build\.log.*%Error: boom"):
        rtl_device.build(boards.load("sim"))
    (d,) = rtl_device.cache_root().iterdir()
    assert sorted(p.name for p in d.iterdir()) == ["build.log", "fl_ports.h", "flightllm_top.v"]
    assert "%Error: boom" in (d / "build.log").read_text()
