"""RTL engine (hw/top.py) through the Verilator harness: bit-exact MV/MM against the functional simulator,
cycles equal to the cycle model, and bad instructions stopping the engine with an error code (docs/rtl.md)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from flightllm import boards
from flightllm.errors import DeviceError
from flightllm.isa import ErrCode, Op, SysOp, assemble, make, encode

pytestmark = pytest.mark.rtl

from rtl_available import HAVE, need  # noqa: E402,F401

CASES = [
    ("mv", 192, 576, 4, 16, 0, 1),
    ("mv", 192, 576, 8, 16, 1, 1),
    ("mv", 192, 576, 4, 8, 2, 1),
    ("mv", 192, 576, 4, 2, 2, 1),
    ("mv", 192, 576, 8, 4, 3, 1),
    ("mv", 192, 576, 8, 2, 3, 1),
    ("mv", 576, 1536, 4, 8, 4, 1),
    ("mv", 1536, 576, 4, 16, 5, 1),
    ("mv", 100, 96, 8, 2, 6, 1),
    ("mm", 192, 576, 4, 4, 7, 4),
    ("mm", 192, 576, 8, 8, 8, 3),
    ("mm", 64, 576, 4, 16, 9, 20),
    ("mv", 49152, 576, 8, 16, 11, 1),                # the tied Q8_0 output layer, one tile
    ("mv", 1536, 576, 8, 16, 12, 1),
    ("mv", 193, 576, 4, 16, 13, 1),                  # an odd row count: the last row pair's odd half is padding
    ("mm", 35, 96, 8, 16, 14, 5),
    ("mv", 1, 32, 4, 16, 15, 1),
    ("mv", 1536, 576, 4, 2, 16, 1),                  # reduction taps: 8 blocks of 2:16 a cycle on 2 chains
    ("mv", 1536, 576, 8, 4, 17, 1),                  # 5 blocks of Q8_0 4:16 a cycle, two per chain
    ("mm", 96, 576, 4, 2, 18, 5),
]


@need
@pytest.mark.parametrize("op,rows,cols,wbits,sp,seed,tokens", CASES)
def test_kernel_bit_exact_and_cycles(op, rows, cols, wbits, sp, seed, tokens):
    from flightllm.host.kernel import run

    r = run(op, "rtl", "sim", rows, cols, wbits, sp, seed, tokens)
    assert r["bit_exact"], r
    assert r["cycle_model_error"] <= 0.02, r
    assert r["cycles"] == r["fsim_cycles"], r          # sim/cycles.py describes the RTL exactly
    assert [r["bytes_read"], r["bytes_written"]] == r["fsim_bytes"], r      # RD_BYTES/WR_BYTES, per run
    if op == "mv" and rows * cols >= 1536 * 576:      # dense and sparse alike: memory-bound
        assert r["efficiency"] >= 0.90, r


PYNQ_CASES = [("mv", 192, 576, 4, 16, 0, 1), ("mv", 192, 576, 8, 2, 1, 1), ("mm", 96, 576, 4, 4, 2, 5),
              ("mv", 193, 576, 8, 16, 3, 1), ("mm", 35, 96, 8, 8, 4, 5), ("mm", 64, 576, 4, 16, 9, 20),
              ("mv", 1536, 576, 4, 2, 16, 1), ("mv", 1536, 576, 8, 4, 17, 1)]
KV260_CASES = [("mv", 192, 576, 4, 16, 1, 1), ("mv", 192, 576, 8, 2, 1, 1), ("mm", 96, 576, 4, 4, 2, 5),
               ("mv", 193, 576, 8, 16, 3, 1), ("mm", 35, 96, 8, 8, 4, 5), ("mm", 64, 576, 4, 16, 9, 20),
               ("mm", 35, 96, 8, 16, 14, 5)]    # dense Q8_0 MM, compute-bound: 68-byte units, taken at the first token


@need
@pytest.mark.parametrize("board,op,rows,cols,wbits,sp,seed,tokens",
                         [("pynq-z2", *c) for c in PYNQ_CASES] + [("kv260", *c) for c in KV260_CASES])
def test_kernel_bit_exact_16_byte_port(board, op, rows, cols, wbits, sp, seed, tokens):
    """The 16-byte engines: 3-beat instruction fetch, 4 ABUF banks, 2 block slots. PYNQ-Z2 (SFU width 2): its
    8 B/cycle (64-bit HP0 at the engine clock) is a 16-byte beat every 2 cycles, as the harness serves and the cycle
    model counts (Board.beat_period). KV260 (SFU width 4, ABUF banks in UltraRAM): its 16 B/cycle (128-bit HP0) is
    one beat a cycle. Bit-exact, and cycles and bytes equal to fsim's, on both."""
    from flightllm.host.kernel import run

    r = run(op, "rtl", board, rows, cols, wbits, sp, seed, tokens)
    assert r["bit_exact"], r
    assert r["cycles"] == r["fsim_cycles"], r
    assert [r["bytes_read"], r["bytes_written"]] == r["fsim_bytes"], r


@need
@pytest.mark.parametrize("word,code", [(0xF, ErrCode.ILLEGAL_INSTR), (Op.MISC | 15 << 12, ErrCode.ILLEGAL_INSTR),
                                       (Op.MISC, ErrCode.BUF_OVERFLOW)])
def test_bad_instruction_sets_error(word, code):
    from flightllm.sim.rtl_device import RtlDevice

    dev = RtlDevice(boards.load("sim"), 1 << 16)
    nop = encode(make(Op.SYS, fn=SysOp.NOP))
    dev.mem[0:4] = np.asarray(nop, "<u4").view(np.uint8)
    dev.mem[4:8] = np.asarray([word], "<u4").view(np.uint8)
    with pytest.raises(DeviceError) as e:
        dev.run(0)
    assert e.value.code == code and e.value.pc == 1


@need
def test_buffer_overflow_sets_error():
    from flightllm.sim.rtl_device import RtlDevice

    b = boards.load("sim")
    prog = [make(Op.LD, fmt=2, dst=b.accel.qbuf_bytes, addr=0, rows=1, cols=32, src_stride=36, dst_stride=32),
            make(Op.SYS, fn=SysOp.END)]
    dev = RtlDevice(b, 1 << 16)
    w = assemble(prog).view(np.uint8)
    dev.mem[4096: 4096 + w.size] = w
    with pytest.raises(DeviceError) as e:
        dev.run(4096)
    assert e.value.code == ErrCode.BUF_OVERFLOW and e.value.pc == 0


@need
def test_mv_weights_out_of_memory_sets_error():
    """An MV whose weight rows run past the end of device memory stops with MEM_BOUNDS, as on fsim."""
    from flightllm.sim.rtl_device import RtlDevice

    b = boards.load("sim")
    size = 1 << 16
    prog = [make(Op.MV, fmt=0, sp_n=16, rows=4, cols=64, waddr=size - 64, wstride=40, xaddr=0, xstride=64,
                 yaddr=0, ystride=4, tokens=1),
            make(Op.SYS, fn=SysOp.END)]
    dev = RtlDevice(b, size)
    w = assemble(prog).view(np.uint8)
    dev.mem[4096: 4096 + w.size] = w
    with pytest.raises(DeviceError) as e:
        dev.run(4096)
    assert e.value.code == ErrCode.MEM_BOUNDS and e.value.pc == 0


@need
def test_verilator_lint_clean(tmp_path, capsys, monkeypatch):
    """`flightllm build --lint`: `verilator --lint-only` with the documented flags (sim/rtl_device.py LINT_FLAGS)
    reports nothing on the Verilog of every target: what the harness runs (`sim`), what yosys and the vendor flow
    get (`synth`, `xilinx` with a BUFGCE stub). The flags are what makes it clean, and a message fails the command."""
    import json
    import subprocess

    from flightllm import cli
    from flightllm.sim import rtl_device

    b = boards.load("sim")
    assert cli._lint(b, True) == 0
    r = json.loads(capsys.readouterr().out)
    assert list(r["targets"]) == ["sim", "synth", "xilinx"] and r["flags"] == rtl_device.LINT_FLAGS
    assert all(t["clean"] and t["messages"] == "" for t in r["targets"].values()), r
    # without one waiver, -Wall speaks (Amaranth leaves unused signals): lint is not vacuous
    flags = [f for f in rtl_device.LINT_FLAGS if f != "-Wno-UNUSEDSIGNAL"]
    monkeypatch.setattr(rtl_device, "LINT_FLAGS", flags)
    loud = rtl_device.lint(b, tmp_path, "sim")
    assert loud.returncode != 0 and "UNUSEDSIGNAL" in loud.stderr
    monkeypatch.setattr(rtl_device, "lint", lambda *a: subprocess.CompletedProcess([], 0, "", "%Warning-X: y"))
    assert cli._lint(b, False) == 1 and "NOT clean" in capsys.readouterr().out
