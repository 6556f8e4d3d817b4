"""The on-disk cache keeps a few entries per group (flightllm/cache.py): artifacts, Verilator builds, Verilog."""
from __future__ import annotations

import os
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


def test_prune_keeps_the_most_recent_of_a_group_only(tmp_path, monkeypatch):
    monkeypatch.delenv("FLIGHTLLM_CACHE_KEEP", raising=False)
    names = ["sim-" + k for k in ("0a1", "0a2", "0a3", "0a4", "0a5")]
    others = ["sim-2ch-0b1", "sim-2ch-0b2", "kv260-0c1", "sim-0a6.tmp123", "sim-synth-0d1"]
    _entries(tmp_path, names + others, dirs=set(names[:2]) | {"sim-2ch-0b1"})
    new = tmp_path / "sim-0a9"
    new.mkdir()
    gone = cache.prune(new, "sim-", keep=3)
    assert sorted(p.name for p in gone) == names[:3]                 # folders and files alike
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(names[3:] + others + ["sim-0a9"])          # other boards and in-progress builds stay


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
