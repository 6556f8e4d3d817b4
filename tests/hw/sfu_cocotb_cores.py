"""cocotb testbenches of the SFU datapath cores (run by tests/hw/test_sfu_rtl_cores.py), against sfu_model.

Each core is streamed one chunk per cycle; every result must come out exactly 2 cycles after its input and
equal the reference model's bits.
"""
from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge

from flightllm.formats import BLOCK
from flightllm.sim import sfu_model as sm
from cocotb_values import u, pack

W = int(os.environ["SFU_W"])
SEED = int(os.environ.get("SFU_SEED", "1"))
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


def unpack(x, n, bits, signed=True):
    mask = (1 << bits) - 1
    vals = [(x >> (bits * i)) & mask for i in range(n)]
    if signed:
        vals = [v - (1 << bits) if v >> (bits - 1) else v for v in vals]
    return vals


def rand32(rng, shape, big=0.3):
    """Mix of full-range int32, ACT-sized values, tiny values and the extremes."""
    full = rng.integers(I32_MIN, I32_MAX, shape, endpoint=True)
    act = rng.integers(-(40 << 12), 40 << 12, shape)
    tiny = rng.integers(-4, 5, shape)
    ext = rng.choice([I32_MIN, I32_MAX, I32_MIN + 1, I32_MAX - 1, 0], shape)
    sel = rng.random(shape)
    return np.where(sel < big, full, np.where(sel < 0.8, act, np.where(sel < 0.9, tiny, ext))).astype(np.int64)


async def stream(dut, core, vectors, outs):
    """vectors: list of {port: int}; returns, per vector, {port: int} of outputs 2 cycles later."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    vi = getattr(dut, f"{core}_valid_i")
    vo = getattr(dut, f"{core}_valid_o")
    vi.value = 0
    await FallingEdge(dut.clk)
    got, cyc = [], 0
    issued = {}
    for k in range(len(vectors) + 3):
        if u(vo):
            got.append((cyc, {o: u(getattr(dut, f"{core}_{o}")) for o in outs}))
        if k < len(vectors):
            for p, v in vectors[k].items():
                getattr(dut, f"{core}_{p}").value = v
            vi.value = 1
            issued[len(issued)] = cyc
        else:
            vi.value = 0
        await FallingEdge(dut.clk)
        cyc += 1
    assert len(got) == len(vectors), f"{core}: {len(got)} results for {len(vectors)} inputs"
    for i, (c, _) in enumerate(got):
        assert c - issued[i] == 2, f"{core}: latency {c - issued[i]} != 2"
    return [g for _, g in got]


def check(name, got, exp, ctx):
    got, exp = np.asarray(got, np.int64), np.asarray(exp, np.int64)
    if not np.array_equal(got, exp):
        bad = np.nonzero(got.ravel() != exp.ravel())[0][:4]
        raise AssertionError(f"{name} mismatch at {bad.tolist()}: got {got.ravel()[bad].tolist()} "
                             f"expected {exp.ravel()[bad].tolist()} ({ctx})")


@cocotb.test()
async def elt(dut):
    rng = np.random.default_rng(SEED)
    N = 200
    a, b = rand32(rng, (N, W)), rand32(rng, (N, W))
    add = rng.integers(0, 2, N)
    vec = [{"a": pack(a[k], 32), "b": pack(b[k], 32), "add": int(add[k])} for k in range(N)]
    res = await stream(dut, "elt", vec, ["y"])
    for k in range(N):
        exp = sm.add(a[k], b[k]) if add[k] else a[k]
        check("elt", unpack(res[k]["y"], W, 32), exp, f"vector {k}")
    dut._log.info(f"elt: {N} vectors x {W} lanes bit-exact")


@cocotb.test()
async def silu(dut):
    rng = np.random.default_rng(SEED + 1)
    N = 300
    a = rand32(rng, (N, W))
    a[: N // 3] = rng.integers(-(20 << 12), 20 << 12, (N // 3, W))          # inside and just outside +-16
    a[N // 3: N // 3 + 10] = rng.choice([-(16 << 12) - 1, -(16 << 12), (16 << 12) - 1, 16 << 12, -1, 0, 1],
                                        (10, W))
    b = rand32(rng, (N, W))
    vec = [{"a": pack(a[k], 32), "b": pack(b[k], 32)} for k in range(N)]
    res = await stream(dut, "silu", vec, ["y"])
    exp = sm.silu_mul(a, b)
    check("silu", [unpack(r["y"], W, 32) for r in res], exp, "")
    dut._log.info(f"silu: {N} vectors x {W} lanes bit-exact")


@cocotb.test()
async def rope(dut):
    rng = np.random.default_rng(SEED + 2)
    N = 200
    x = rand32(rng, (N, W))
    ang = rng.uniform(-np.pi, np.pi, (N, W // 2))
    c = np.round(np.cos(ang) * (1 << 30)).astype(np.int64)
    s = np.round(np.sin(ang) * (1 << 30)).astype(np.int64)
    c[:5], s[:5] = 1 << 30, -(1 << 30)                                       # extremes of the Q.30 range
    vec = [{"x": pack(x[k], 32), "c": pack(c[k], 32), "s": pack(s[k], 32)} for k in range(N)]
    res = await stream(dut, "rope", vec, ["y"])
    for k in range(N):
        exp = sm.rope(x[k][None], np.concatenate([c[k], s[k]])[None], W)[0]
        check("rope", unpack(res[k]["y"], W, 32), exp, f"vector {k}")
    dut._log.info(f"rope: {N} vectors bit-exact")


@cocotb.test()
async def argmax(dut):
    rng = np.random.default_rng(SEED + 3)
    N = 300
    x = rand32(rng, (N, W))
    x[:40] = rng.integers(-3, 3, (40, W))                                    # many ties: first maximum wins
    live = rng.integers(1, 1 << W, N)
    live[:20] = (1 << W) - 1
    vec = [{"x": pack(x[k], 32), "live": int(live[k])} for k in range(N)]
    res = await stream(dut, "am", vec, ["val", "lane", "any"])
    for k in range(N):
        idx = [i for i in range(W) if live[k] >> i & 1]
        j = idx[int(sm.argmax(x[k][idx][None])[0])]
        got = (unpack(res[k]["val"], 1, 32)[0], res[k]["lane"], res[k]["any"])
        assert got == (x[k][j], j, 1), f"argmax vector {k}: got {got}, expected {(x[k][j], j, 1)}"
    dut._log.info(f"argmax: {N} chunks bit-exact")


@cocotb.test()
async def quant(dut):
    """Blocks as BLOCK / W chunks of W elements (random gaps between chunks and blocks); each block's q, m, e and
    address come out with valid_o exactly C + 1 cycles after its last chunk (C = BLOCK / W), busy until then."""
    rng = np.random.default_rng(SEED + 4)
    N = 200
    C = BLOCK // W
    x = rand32(rng, (N, BLOCK))
    x[0] = 0                                                                 # zero block
    x[1] = I32_MIN                                                           # saturating values
    x[2] = I32_MAX
    x[3, ::2], x[3, 1::2] = I32_MIN, I32_MAX
    x[4] = rng.integers(-2, 3, BLOCK)
    x[5, :] = 0
    x[5, 7] = 1
    for k in range(6, 38):                                                   # one block per octave of amax
        hi = 1 << (k - 6)
        x[k] = rng.integers(-hi, hi, BLOCK)
    frac = rng.integers(0, 31, N)
    frac[:3] = [12, 0, 300]
    addr = rng.integers(0, 1 << 19, N)
    # schedule: (block, chunk) per cycle or None; a block's last chunk >= C cycles after the previous block's
    sched, last_at = [], -C
    for k in range(N):
        for c in range(C):
            while rng.random() < (0.3 if k % 3 == 0 else 0.0) or (c == C - 1 and len(sched) - last_at < C):
                sched.append(None)
            sched.append((k, c))
        last_at = len(sched) - 1
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    dut.quant_valid_i.value = 0
    await FallingEdge(dut.clk)
    got, ends = [], {}
    for cyc in range(len(sched) + C + 4):
        if u(dut.quant_valid_o):
            got.append((cyc, u(dut.quant_q), u(dut.quant_m), u(dut.quant_e), u(dut.quant_addr_o)))
        s = sched[cyc] if cyc < len(sched) else None
        if s is None:
            dut.quant_valid_i.value = 0
        else:
            k, c = s
            dut.quant_valid_i.value = 1
            dut.quant_x.value = pack(x[k][c * W:(c + 1) * W], 32)
            dut.quant_first.value = int(c == 0)
            dut.quant_last.value = int(c == C - 1)
            dut.quant_frac.value = int(frac[k])
            dut.quant_addr_i.value = int(addr[k])
            if c == C - 1:
                ends[k] = cyc
        await FallingEdge(dut.clk)
    assert len(got) == N, f"quant: {len(got)} results for {N} blocks"
    for k, (cyc, qv, mv, ev, av) in enumerate(got):
        assert cyc - ends[k] == C + 1, f"quant: latency {cyc - ends[k]} != {C + 1}"
        q, mm, e = sm.quant(x[k][None], int(frac[k]))
        check("quant q", unpack(qv, BLOCK, 8), q[0], f"block {k}")
        assert mv == int(mm[0, 0]), f"quant m block {k}: {mv} != {int(mm[0, 0])}"
        assert unpack(ev, 1, 8)[0] == int(e[0, 0]), f"quant e block {k}"
        assert av == int(addr[k]), f"quant addr block {k}"
    dut._log.info(f"quant: {N} blocks bit-exact, {C} chunks each")


@cocotb.test()
async def sumsq_rms(dut):
    """RMSNorm's two element passes on whole rows; the row scalar (rinv) as sfu_model.rmsnorm derives it."""
    import math
    rng = np.random.default_rng(SEED + 5)
    rows = []
    for k in range(12):
        n = W * int(rng.integers(1, 9))
        x = rand32(rng, (n,), big=0.1 if k % 2 else 0.5)
        if k == 0:
            x[:] = 0                                                         # zero vector
        if k == 1:
            x[:] = I32_MIN                                                   # largest magnitudes
        if k == 2:
            x[:] = rng.integers(-2, 3, n)
        g = rng.integers(-(3 << 16), 3 << 16, n)
        eps = int(rng.choice([0, 168, 1 << 20]))
        if k == 0:
            eps = 0
        rows.append((x, g, eps))
    # pass 1: sum of squares per chunk, with random dead lanes on a scratch copy
    vec, exp_ss = [], []
    for x, _, _ in rows:
        for c in range(0, len(x), W):
            live = int(rng.integers(0, 1 << W))
            vec.append({"x": pack(x[c:c + W], 32), "live": live})
            exp_ss.append(sum(int(x[c + i]) ** 2 for i in range(W) if live >> i & 1))
    res = await stream(dut, "sumsq", vec, ["ss"])
    assert [r["ss"] for r in res] == exp_ss, "sumsq mismatch"
    # pass 2: normalise with the row's rinv
    vec, exp_y = [], []
    for x, g, eps in rows:
        n = len(x)
        ss = sum(int(v) ** 2 for v in x)
        s = math.isqrt((ss // n + eps) << 24)
        rinv = (1 << 62) // s if s else 0
        exp_y.append(sm.rmsnorm(x[None], g, eps)[0])
        for c in range(0, n, W):
            vec.append({"x": pack(x[c:c + W], 32), "g": pack(g[c:c + W], 32), "rinv": rinv})
    res = await stream(dut, "rms", vec, ["y"])
    got = np.concatenate([unpack(r["y"], W, 32) for r in res])
    check("rmsnorm", got, np.concatenate(exp_y), "")
    dut._log.info(f"rmsnorm: {len(rows)} rows ({len(vec)} chunks) bit-exact")


@cocotb.test()
async def exp_softmax(dut):
    """Softmax's exp/normalise pass on whole rows (max and reciprocal as sfu_model.softmax derives them)."""
    rng = np.random.default_rng(SEED + 6)
    rows = []
    for k in range(14):
        n = W * int(rng.integers(1, 9))
        x = rand32(rng, (n,), big=0.2)
        if k == 0:
            x[:] = 12345                                                     # all equal
        if k == 1:
            x[:] = rng.choice([I32_MIN, I32_MAX], n)                         # largest magnitudes
        valid = int(rng.integers(1, n + 1)) if k > 2 else n                  # masked (causal) lengths
        mult = int(rng.choice([11819, 94548, 1, 1 << 16, (1 << 31) - 1 if k == 1 else 3000]))
        rows.append((x, valid, mult))
    vec, exp_y, exp_e = [], [], []
    for x, valid, mult in rows:
        n = len(x)
        mx = int(x[:valid].max())
        z = mx - x[:valid]
        w = (z * mult) >> 16
        e = sm.exp2_table()[w & 4095] >> np.minimum(w >> 12, 62)
        rinv = (1 << 61) // int(e.sum())
        exp_y.append(sm.softmax(x[None], np.array([valid]), mult)[0])
        exp_e.append(np.concatenate([e, np.zeros(n - valid, np.int64)]))
        for c in range(0, n, W):
            live = sum(1 << i for i in range(W) if c + i < valid)
            vec.append({"x": pack(x[c:c + W], 32), "live": live, "mx": mx & 0xFFFFFFFF, "mult": mult,
                        "rinv": rinv})
    res = await stream(dut, "exp", vec, ["e", "y"])
    check("softmax e", np.concatenate([unpack(r["e"], W, 31, False) for r in res]), np.concatenate(exp_e), "")
    check("softmax y", np.concatenate([unpack(r["y"], W, 32) for r in res]), np.concatenate(exp_y), "")
    dut._log.info(f"softmax: {len(rows)} rows ({len(vec)} chunks) bit-exact")
