"""hw/mpe.py alone in Amaranth's Python simulator: one group of units (one stream row: one output row, or a row
pair for the paired formats) per weight format, every slot's block dot product ``acc``, activation sum ``qs`` and
dequantised term ``V`` against sim/mpe_model.py's arithmetic, and the ABUF words the engine writes (both rows of a
pair, or only the even one when the odd row is padding). Fast to debug with: no Verilator, no top."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from amaranth import Elaboratable, Module
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from flightllm import boards
from flightllm.formats import BLOCK, GROUP, interleave_rows, pack_sparse, pack_weights, paired, unpack_weights
from flightllm.hw import params as P
from flightllm.hw.mpe import Mpe
from flightllm.isa import WFmt
from flightllm.sim import mpe_model as MM


def _case(fmt, sp, nb, seed, wfrac=9, R=1):
    rng = np.random.default_rng(seed)
    C = BLOCK * nb
    if fmt == WFmt.I16:
        q = rng.integers(-3000, 3000, (R, C)).astype("<i2")
        raw = q.view(np.uint8).reshape(R, -1)
    else:
        q = rng.integers(0, 16, (R, C)) if fmt == WFmt.Q4_1 else rng.integers(-128, 128, (R, C))
        d16 = np.float16(rng.uniform(-0.02, 0.02, (R, nb))).view(np.uint16)
        m16 = np.float16(rng.uniform(-0.2, 0.0, (R, nb))).view(np.uint16) if fmt == WFmt.Q4_1 else None
        if sp == 16:
            raw = pack_weights(q, d16, m16, fmt)
        else:
            keep = np.zeros((R, C // GROUP, GROUP), bool)
            for r in range(R):
                for g in range(C // GROUP):
                    keep[r, g, rng.choice(GROUP, sp, replace=False)] = True
            raw = pack_sparse(q, keep.reshape(R, C), d16, m16, fmt, sp)
    Q, D, M, mask = unpack_weights(raw, fmt, sp, R, C, wfrac)
    xq = rng.integers(-127, 128, (1, C)).astype(np.int8)
    xm = rng.integers(1024, 2048, (1, nb)).astype(np.uint16)
    xe = rng.integers(-34, -22, (1, nb)).astype(np.int8)
    return raw, Q, D, M, mask, xq, xm, xe


def _board(name):
    """A board file, or ``sim+slots4``: the sim board with its block slots capped at 4 (``accel.block_slots``)."""
    if name == "sim+slots4":
        b = boards.load("sim")
        return dataclasses.replace(b, accel=dataclasses.replace(b.accel, block_slots=4))
    return boards.load(name)


@pytest.mark.parametrize("board,fmt,sp,R", [("sim", WFmt.Q4_1, 16, 2), ("sim", WFmt.Q8_0, 16, 2),
                                            ("sim", WFmt.Q4_1, 16, 1), ("sim", WFmt.Q8_0, 16, 1),
                                            ("sim", WFmt.Q4_1, 2, 1), ("sim", WFmt.Q8_0, 4, 1), ("sim", WFmt.I16, 16, 1),
                                            # reduction taps: 4 (N=2) and 2 (N=4) blocks per chain; N=8 whole chains
                                            ("sim", WFmt.Q8_0, 2, 1), ("sim", WFmt.Q4_1, 4, 1),
                                            ("sim", WFmt.Q4_1, 8, 1), ("sim", WFmt.Q8_0, 8, 1),
                                            # accel.block_slots = 4: the cap (sparse 2:16: 4 blocks on one chain)
                                            ("sim+slots4", WFmt.Q4_1, 2, 1), ("sim+slots4", WFmt.Q8_0, 16, 2),
                                            # a 16-byte port: 2 block slots (one row-pair unit, two sparse blocks)
                                            ("kv260", WFmt.Q4_1, 16, 2), ("kv260", WFmt.Q8_0, 2, 1)])
def test_mpe_one_group(board, fmt, sp, R):
    b = _board(board)           # sim: 8 block slots, 4 chains (sparse 2:16: 8 blocks on 2 chains)
    pr = paired(fmt, sp)
    U = P.units(b, fmt, sp)
    nb, wfrac = U, 9
    raw, Q, D, M, mask, xq, xm, xe = _case(fmt, sp, nb, 7 + int(fmt) * 16 + sp + R, wfrac, R)
    ref = MM.mm(MM.Weights(Q, D, M, mask, fmt), xq, xm, xe)[0]
    qb = Q.reshape(R, nb, BLOCK).astype(np.int64)
    xb = xq.reshape(nb, BLOCK).astype(np.int64)
    acc = (qb * xb[None]).sum(-1)                                   # (R, nb)
    kept = np.ones_like(qb, bool) if mask is None else mask.reshape(R, nb, BLOCK)
    qs = (kept * xb[None]).sum(-1)
    T = D * acc + (M * qs if fmt == WFmt.Q4_1 else 0)
    V = (T * xm[0].astype(np.int64)[None]) >> (-xe[0].astype(np.int64)[None])
    if pr:      # slot 2u: row 0 block u, slot 2u + 1: row 1 block u (zero weights for a padding row)
        pad = lambda a: np.concatenate([a, np.zeros((2 - R, nb), np.int64)]).T.reshape(-1)   # noqa: E731
        acc_s, qs_s, V_s = pad(acc), np.repeat(qs[0], 2), pad(V)
    else:
        acc_s, qs_s, V_s = acc[0], qs[0], V[0]
    words = [int.from_bytes(xq[0, BLOCK * i:BLOCK * (i + 1)].tobytes(), "little") | (int(xm[0, i]) << 256)
             | ((int(xe[0, i]) & 0xFF) << 272) for i in range(nb)]
    KM = P.max_lanes(b)
    nsl = P.lanes(b, fmt, sp)
    stream = interleave_rows(raw, fmt, sp)[0]

    class Wrap(Elaboratable):
        def __init__(self):
            self.mem = Memory(shape=280, depth=16, init=words + [0] * (16 - nb))
            self.mpe = Mpe(b, [self.mem.read_port() for _ in range(KM)], 16)

        def elaborate(self, platform):
            m = Module()
            m.submodules.mem, m.submodules.mpe = self.mem, self.mpe
            return m

    top = Wrap()
    mpe = top.mpe
    # stream row 1 of a paired matrix is output rows 2 and 3; an unpaired stream row is its output row
    YBASE, srow = 3, 1 if pr else 2
    y_row = 2 * srow if pr else srow
    seen = {"acc": None, "V": None, "y": [], "y1": []}

    async def tb(ctx):
        ctx.set(mpe.mode, P.mode_index(fmt, sp))
        ctx.set(mpe.wfrac, wfrac)
        ctx.set(mpe.clear, 1)
        await ctx.tick()
        ctx.set(mpe.clear, 0)
        ctx.set(mpe.win, int.from_bytes(stream.tobytes(), "little"))
        for sig, v in ((mpe.go, 1), (mpe.kp, nb), (mpe.rem, nb), (mpe.rowend, 1), (mpe.nb, nb), (mpe.b0, 0),
                       (mpe.xrow, 0), (mpe.ybase, YBASE), (mpe.row, srow), (mpe.oddv, int(R == 2))):
            ctx.set(sig, v)
        await ctx.tick()
        ctx.set(mpe.go, 0)
        for c in range(mpe.depth + 4):
            a = [ctx.get(x) for x in mpe.dbg["acc"][:nsl]]
            if any(a) and seen["acc"] is None:
                seen["acc"] = (a, [ctx.get(x) for x in mpe.dbg["qs"][:nsl]])
            v = [ctx.get(x) for x in mpe.dbg["V"][:nsl]]
            if any(v) and seen["V"] is None:
                seen["V"] = v
            if ctx.get(mpe.ab_wen):
                seen["y"].append((c, ctx.get(mpe.ab_waddr), ctx.get(mpe.ab_wdata)))
            if ctx.get(mpe.ab_wen1):
                seen["y1"].append((c, ctx.get(mpe.ab_waddr1), ctx.get(mpe.ab_wdata1)))
            await ctx.tick()

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert seen["acc"] is not None and list(seen["acc"][0]) == list(acc_s)
    if fmt == WFmt.Q4_1:
        assert list(seen["acc"][1]) == list(qs_s)
    assert list(seen["V"]) == list(V_s)
    assert len(seen["y"]) == 1
    c, addr, y = seen["y"][0]
    assert (c, addr) == (mpe.depth - 1, YBASE + y_row)
    assert y - (1 << 32) * (y >> 31) == ref[0]
    if pr and R == 2:
        assert len(seen["y1"]) == 1
        c, addr, y = seen["y1"][0]
        assert (c, addr) == (mpe.depth - 1, YBASE + y_row + 1)
        assert y - (1 << 32) * (y >> 31) == ref[1]
    else:
        assert seen["y1"] == []
