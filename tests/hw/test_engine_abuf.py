"""hw/engine_abuf.py alone in Amaranth's Python simulator: for runs of consecutive engine addresses (the only
arrangement lockstep engines produce, paired and unpaired, any start, some ports disabled as padding), every bank
gets exactly the port whose word it holds, and each port reads back its own word the next cycle: what the
address-compare crossbar it replaced did."""
from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from flightllm.hw.engine_abuf import EngineAbufPorts

ABITS = 12


def _run(C, NL, cases):
    dut = EngineAbufPorts(C, NL, ABITS)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    lg = (NL - 1).bit_length()

    async def bench(ctx):
        for pair, A, pad in cases:
            # engine c's ports: paired A + 2c + h, else A + c (port 0 only); engines >= C - pad are padding
            addrs, ens = {}, {}
            for c in range(C):
                for h in range(2):
                    k = 2 * c + h
                    addrs[k] = (A + (2 * c + h if pair else c)) % (1 << ABITS)
                    ens[k] = c < C - pad and (pair or h == 0)
            for k in range(2 * C):
                ctx.set(dut.ren[k], ens[k])
                ctx.set(dut.raddr[k], addrs[k])
                ctx.set(dut.wen[k], ens[k])
                ctx.set(dut.waddr[k], addrs[k])
                ctx.set(dut.wdata[k], 0x1000 + k)
            ctx.set(dut.rpair, pair)
            ctx.set(dut.wpair, pair)
            want = {addrs[k] % NL: k for k in range(2 * C) if ens[k]}
            for i in range(NL):
                assert ctx.get(dut.bank_wen[i]) == (i in want), (pair, A, pad, i)
                assert ctx.get(dut.bank_ren[i]) == (i in want), (pair, A, pad, i)
                if i in want:
                    assert ctx.get(dut.bank_waddr[i]) == addrs[want[i]] >> lg
                    assert ctx.get(dut.bank_raddr[i]) == addrs[want[i]] >> lg
                    assert ctx.get(dut.bank_wdata[i]) == 0x1000 + want[i]
            await ctx.tick()
            for i in range(NL):         # bank i answers with a word naming itself
                ctx.set(dut.bank_rdata[i], 0xB000 + i)
            for k in range(2 * C):
                if ens[k]:
                    assert ctx.get(dut.rdata[k]) == 0xB000 + addrs[k] % NL, (pair, A, pad, k)

    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("C,NL", [(1, 16), (2, 4), (2, 16), (4, 8), (16, 32)])
def test_runs_land_on_their_banks(C, NL):
    rng = random.Random(C * 100 + NL)
    cases = [(pair, A, 0) for pair in (1, 0) for A in range(NL)]
    cases += [(rng.randrange(2), rng.randrange(1 << ABITS), rng.randrange(C)) for _ in range(40)]
    _run(C, NL, cases)
