"""cocotb testbench of the SFU sequencer (run by tests/hw/test_sfu_rtl_seq.py): whole MISC instructions on a
Python ABUF/QBUF model, compared with sim/fsim.py's _x_MISC on the same state; cycles with sim/sfu_cycles.py."""
from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, Timer

from flightllm import boards
from flightllm.formats import BLOCK
from flightllm.isa import MiscOp
from flightllm.sim.fsim import FunctionalSim, RunStats
from flightllm.sim.sfu_cycles import sfu_cycles
from cocotb_values import u

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


class Buffers:
    def __init__(self, board):
        a = board.accel
        self.abuf = np.zeros(a.abuf_words, np.int32)
        self.qbuf = np.zeros(a.qbuf_bytes, np.int8)
        self.qm = np.zeros(a.qbuf_bytes // BLOCK, np.uint16)
        self.qe = np.zeros(a.qbuf_bytes // BLOCK, np.int8)


async def run_misc(dut, W, f, n_res, B: Buffers):
    """Drive one MISC instruction; serve ABUF reads (1-cycle latency), apply writes. Returns cycles from the
    start cycle to the done cycle, both included."""
    for k in ("fn", "src", "src2", "dst", "rows", "src_stride", "src2_stride", "dst_stride", "imm", "causal"):
        getattr(dut, k).value = int(f[k])
    dut.n.value = n_res
    dut.start.value = 1                  # set mid-cycle: this cycle is the start cycle (cycle 0)
    size = B.abuf.size
    pending = None
    cyc = 1
    while True:
        await FallingEdge(dut.clk)       # middle of cycle `cyc`
        if pending is not None:
            dut.rd_data.value = pending
            pending = None
        dut.start.value = 0
        if u(dut.rd_en):
            a = u(dut.rd_addr)
            words = B.abuf[(a + np.arange(W)) % size].astype(np.int64) & 0xFFFFFFFF
            pending = sum(int(w) << (32 * i) for i, w in enumerate(words))
        if u(dut.wr_en):
            a, mask, data = u(dut.wr_addr), u(dut.wr_mask), u(dut.wr_data)
            for i in range(W):
                if mask >> i & 1:
                    v = (data >> (32 * i)) & 0xFFFFFFFF
                    B.abuf[a + i] = v - (1 << 32) if v >> 31 else v
        if u(dut.q_en):
            qa, qd = u(dut.q_addr), u(dut.q_data)
            B.qbuf[qa * BLOCK:(qa + 1) * BLOCK] = np.frombuffer(qd.to_bytes(BLOCK, "little"), np.int8)
            B.qm[qa] = u(dut.q_m)
            B.qe[qa] = np.uint8(u(dut.q_e)).view(np.int8)
        if u(dut.done):
            assert u(dut.busy), "busy must stay high through the done cycle"
            await FallingEdge(dut.clk)
            assert not u(dut.busy), "busy must drop after the done cycle"
            return cyc + 1               # cycles 0..cyc
        cyc += 1
        assert cyc < 200_000, "SFU never finished"


def fields(fn, n, rows, src=0, src2=0, dst=0, ss=None, s2s=0, ds=None, imm=0, causal=0, n_pos=0):
    return dict(fn=int(fn), n=n, n_pos=n_pos, rows=rows, src=src, src2=src2, dst=dst,
                src_stride=n if ss is None else ss, src2_stride=s2s, dst_stride=n if ds is None else ds, imm=imm,
                causal=causal)


def cases(rng):
    act = lambda *s: rng.integers(-(8 << 12), 8 << 12, s)                       # noqa: E731
    full = lambda *s: rng.integers(I32_MIN, I32_MAX, s, endpoint=True)        # noqa: E731
    C = []
    # name, fields, pos, {abuf address: values}
    C.append(("copy", fields(MiscOp.COPY, 37, 3, src=100, dst=400, ss=40, ds=41), 0, {100: full(120)}))
    a, b = full(100), full(100)
    a[:4], b[:4] = I32_MAX, [1, I32_MAX, -1, 0]
    C.append(("add_inplace", fields(MiscOp.ADD, 50, 2, src=0, src2=300, dst=0, s2s=50), 0, {0: a, 300: b}))
    x = rng.integers(-(20 << 12), 20 << 12, 66)
    x[:4] = [I32_MIN, I32_MAX, -(16 << 12) - 1, 16 << 12]
    C.append(("silu_mul", fields(MiscOp.SILU_MUL, 33, 2, src=10, src2=200, dst=10, s2s=33), 0,
              {10: x, 200: act(66)}))
    for hd, n in ((8, 24), (2, 6), (4, 12)):
        ang = rng.uniform(-np.pi, np.pi, (2, hd // 2))
        tab = np.concatenate([np.round(np.cos(ang) * (1 << 30)), np.round(np.sin(ang) * (1 << 30))], 1)
        C.append((f"rope_hd{hd}", fields(MiscOp.ROPE, n, 2, src=64, src2=500, dst=64, s2s=hd + 3, imm=hd), 0,
                  {64: full(2 * n), 500: tab[0].astype(np.int64), 500 + hd + 3: tab[1].astype(np.int64)}))
    x = act(120)
    x[:40] = 0                                                                  # zero row
    x[40:80] = rng.choice([I32_MIN, I32_MAX], 40)                               # large magnitudes
    C.append(("rmsnorm", fields(MiscOp.RMSNORM, 40, 3, src=1000, src2=2000, dst=1000, imm=168), 0,
              {1000: x, 2000: rng.integers(-(2 << 16), 2 << 16, 40)}))
    C.append(("rmsnorm_eps0", fields(MiscOp.RMSNORM, 13, 2, src=1000, src2=2000, dst=3000, ds=16, imm=0), 0,
              {1000: np.concatenate([np.zeros(13, int), act(13)]), 2000: rng.integers(0, 2 << 16, 13)}))
    x = act(42)
    x[:21] = 777                                                                # all equal
    C.append(("softmax", fields(MiscOp.SOFTMAX, 21, 2, src=50, dst=50, imm=11819), 0, {50: x}))
    x = full(44)
    C.append(("softmax_causal", fields(MiscOp.SOFTMAX, 5, 4, src=300, dst=700, ss=11, ds=12, imm=94548,
                                       causal=1, n_pos=1), 3, {300: x}))
    x = full(200)
    x[:32] = 0                                                                  # zero block
    x[32:64] = rng.choice([I32_MIN, I32_MAX], 32)                               # saturating values
    x[70:102] = rng.integers(-3, 4, 32)
    C.append(("quant", fields(MiscOp.QUANT, 70, 2, src=20, dst=64, ss=80, ds=128, imm=12), 0, {20: x}))
    x = rng.integers(-5, 5, 135)                                                # ties: first maximum
    x[100] = I32_MIN
    C.append(("argmax", fields(MiscOp.ARGMAX, 45, 3, src=900, dst=1500, ds=1), 0, {900: x}))
    C += random_cases(rng, int(os.environ.get("SFU_RANDOM", "6")))
    return C


def random_cases(rng, reps):
    """``reps`` random shapes per function: sizes, strides, in-place or not, data mixing every magnitude."""
    def data(k):
        full = rng.integers(I32_MIN, I32_MAX, k, endpoint=True)
        act = rng.integers(-(30 << 12), 30 << 12, k)
        small = rng.integers(-3, 4, k)
        sel = rng.random(k)
        return np.where(sel < 0.25, full, np.where(sel < 0.85, act, small))

    C = []
    for fn in MiscOp:
        for rep in range(reps):
            rows = int(rng.integers(1, 4))
            n = int(rng.integers(1, 70))
            pos, n_pos, causal, imm = 0, 0, 0, 0
            if fn == MiscOp.ROPE:
                imm = int(rng.choice([2, 4, 6, 8, 12, 16]))
                n = imm * int(rng.integers(1, 5))
            if fn == MiscOp.SOFTMAX:
                causal, n_pos = int(rng.integers(0, 2)), int(rng.integers(0, 2))
                pos = int(rng.integers(0, 6))
                imm = int(rng.integers(1000, 200000))
            if fn == MiscOp.RMSNORM:
                imm = int(rng.choice([0, 1, 168, 1 << 24]))
            if fn == MiscOp.QUANT:
                imm = int(rng.integers(0, 20))
            nr = n + (pos if n_pos else 0)
            width = nr + (rows - 1 if causal else 0)
            ss = width + int(rng.integers(0, 5))
            src, src2 = 4096 + int(rng.integers(0, 64)), 8192 + int(rng.integers(0, 64))
            inplace = fn not in (MiscOp.QUANT, MiscOp.ARGMAX) and rng.random() < 0.5
            if fn == MiscOp.QUANT:
                dst, ds = 32 * int(rng.integers(0, 100)), 32 * (-(-nr // 32) + int(rng.integers(0, 3)))
            elif inplace:
                dst, ds = src, ss
            else:
                dst, ds = 12288 + int(rng.integers(0, 64)), width + int(rng.integers(0, 5))
            s2s = (imm + int(rng.integers(0, 3))) if fn == MiscOp.ROPE else nr + int(rng.integers(0, 5))
            init = {src: data(rows * ss + width)}
            if fn == MiscOp.ROPE:
                ang = rng.uniform(-np.pi, np.pi, (rows, imm // 2))
                tab = np.zeros(rows * s2s + imm, np.int64)
                for r in range(rows):
                    tab[r * s2s: r * s2s + imm] = np.concatenate([np.round(np.cos(ang[r]) * (1 << 30)),
                                                                  np.round(np.sin(ang[r]) * (1 << 30))])
                init[src2] = tab
            elif fn == MiscOp.RMSNORM:
                init[src2] = rng.integers(-(3 << 16), 3 << 16, nr)
            else:
                init[src2] = data(rows * s2s + nr)
            f = fields(fn, n, rows, src=src, src2=src2, dst=dst, ss=ss, s2s=s2s, ds=ds, imm=imm, causal=causal,
                       n_pos=n_pos)
            C.append((f"rand_{fn.name.lower()}_{rep}", f, pos, init))
    return C


@cocotb.test()
async def misc_ops(dut):
    board = boards.load(os.environ["SFU_BOARD"])
    W = int(os.environ["SFU_W"])          # the generated unit's width (the board only sizes the buffers)
    rng = np.random.default_rng(int(os.environ.get("SFU_SEED", "7")))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.start.value = 0
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    fs = FunctionalSim(board, 64)
    B = Buffers(board)
    only = os.environ.get("SFU_CASES")
    report = []
    for name, f, pos, init in cases(rng):
        if only and name not in only.split(","):
            continue
        for addr, vals in init.items():
            B.abuf[addr: addr + len(vals)] = np.asarray(vals, np.int64).astype(np.int32)
        fs.abuf[:], fs.qbuf[:], fs.qm[:], fs.qe[:] = B.abuf, B.qbuf, B.qm, B.qe
        fs.pos = pos
        st = RunStats()
        fs._x_MISC(f, 0, st)
        n_res = f["n"] + (pos if f["n_pos"] else 0)
        dut._log.info(f"{name}: {f}")
        cyc = await run_misc(dut, W, f, n_res, B)
        for nm in ("abuf", "qbuf", "qm", "qe"):
            got, exp = getattr(B, nm), getattr(fs, nm)
            bad = np.nonzero(got != exp)[0]
            assert bad.size == 0, (f"{name}: {nm} differs at {bad[:6].tolist()}: RTL {got[bad[:6]].tolist()} "
                                   f"fsim {exp[bad[:6]].tolist()}")
        width = n_res + (f["rows"] - 1 if f["causal"] and f["fn"] == MiscOp.SOFTMAX else 0)
        model = sfu_cycles(W, f["fn"], f["rows"], width, f["imm"] or None)
        assert cyc == model, f"{name}: RTL took {cyc} cycles, sim/sfu_cycles.py says {model}"
        report.append(f"{name}={cyc}")
    assert report, "no case ran"
    dut._log.info("bit-exact with fsim, cycles == sfu_cycles: " + " ".join(report))


@cocotb.test()
async def abuf_ports(dut):
    """SfuAbufPorts on a Python model of NL banks: W-word reads/writes at every alignment, masks, 1-cycle reads."""
    W, NL = int(os.environ["SFU_W"]), int(os.environ["SFU_NL"])
    depth = 64
    rng = np.random.default_rng(11)
    mem = rng.integers(0, 1 << 32, NL * depth)          # flat word view; bank b row r = word r * NL + b
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    dut.sfu_rd_en.value = 0
    dut.sfu_wr_en.value = 0
    await FallingEdge(dut.clk)
    pend_bank = None
    expect = None
    checked = 0
    for k in range(400):
        # bank side: answer last cycle's bank reads (each bank returns its own row)
        if pend_bank is not None:
            for b in range(NL):
                getattr(dut, f"rdata{b}").value = int(pend_bank[b])
        await Timer(1, "ns")
        if expect is not None:                          # SFU-side data for last cycle's request
            got = u(dut.sfu_rd_data)
            for i, (ok, w) in enumerate(expect):
                if ok:
                    assert (got >> (32 * i)) & 0xFFFFFFFF == w, f"read lane {i} at step {k}"
                    checked += 1
        # new requests
        ra, wa = int(rng.integers(0, NL * (depth - 1))), int(rng.integers(0, NL * (depth - 1)))
        rm, wm = int(rng.integers(1, 1 << W)), int(rng.integers(0, 1 << W))
        wd = [int(v) for v in rng.integers(0, 1 << 32, W)]
        dut.sfu_rd_en.value, dut.sfu_rd_addr.value, dut.sfu_rd_mask.value = 1, ra, rm
        dut.sfu_wr_en.value, dut.sfu_wr_addr.value, dut.sfu_wr_mask.value = 1, wa, wm
        dut.sfu_wr_data.value = sum(w << (32 * i) for i, w in enumerate(wd))
        # check the bank-side signals of this cycle against the banking rule, then model the banks
        await Timer(1, "ns")
        ren, wen = u(dut.ren), u(dut.wen)
        pend_bank = [0] * NL
        for b in range(NL):
            lane = (b - ra) % NL
            want = lane < W and bool(rm >> lane & 1)
            assert bool(ren >> b & 1) == want, f"ren bank {b} step {k}"
            if want:
                assert u(getattr(dut, f"raddr{b}")) == (ra + lane) // NL
            r = u(getattr(dut, f"raddr{b}")) % depth
            pend_bank[b] = int(mem[r * NL + b])          # read-before-write
        for b in range(NL):
            lane = (b - wa) % NL
            want = lane < W and bool(wm >> lane & 1)
            assert bool(wen >> b & 1) == want, f"wen bank {b} step {k}"
            if want:
                assert u(getattr(dut, f"waddr{b}")) == (wa + lane) // NL
                mem[((wa + lane) // NL) * NL + b] = u(getattr(dut, f"wdata{b}"))
                assert mem[wa + lane] == wd[lane]
        expect = [(bool(rm >> i & 1), int(pend_bank[(ra + i) % NL])) for i in range(W)]
        await FallingEdge(dut.clk)
    assert checked > 400
    dut._log.info(f"abuf ports W={W} NL={NL}: {checked} read lanes and every bank enable checked")
