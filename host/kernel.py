"""`flightllm kernel`: one MV/MM on random device-format weights, through the runtime, on fsim or the RTL.

The instruction stream is LD QACT (activations into the QBUF), then row tiles of MV/MM each followed by an ST
of its outputs, then END. On a board with C > 1 weight channels the weights are laid out split (each row tile over
the C channels' sections, SPLIT_STRIDE apart) and the MV/MMs have split = 1, so every channel is exercised.
Results are checked against the reference model (fsim) and, on ``--backend rtl``, the RTL's outputs and cycle
count are compared with the functional simulator's, bit for bit.
"""
from __future__ import annotations

import time

import numpy as np

from flightllm import boards
from flightllm.errors import FlightLLMError
from flightllm.formats import (ACT_FRAC, BLOCK, GROUP, interleave_rows, pack_qact, pack_sparse, pack_weights,
                               row_bytes, row_tile, split_layout, unpack_weights)
from flightllm.isa import LdFmt, Op, StFmt, SysOp, WFmt, assemble, make
from flightllm.compiler.memmap import PAGE, MemoryMap
from flightllm.sim import mpe_model, sfu_model

ALIGN = 64


def random_weights(rng, rows: int, cols: int, wbits: int, sp_n: int):
    """Device-format weight rows plus the float matrix they encode."""
    fmt = WFmt.Q4_1 if wbits == 4 else WFmt.Q8_0
    nb = cols // BLOCK
    d = rng.uniform(0.002, 0.03, (rows, nb)).astype(np.float16)
    if fmt == WFmt.Q4_1:
        q = rng.integers(0, 16, (rows, cols))
        m = (-8 * d.astype(np.float32) * rng.uniform(0.8, 1.2, (rows, nb))).astype(np.float16)
    else:
        q = rng.integers(-127, 128, (rows, cols))
        m = None
    keep = np.ones((rows, cols), bool)
    if sp_n < 16:
        g = rng.random((rows, cols // GROUP, GROUP)).argsort(-1) < sp_n
        keep = g.reshape(rows, cols)
        q = np.where(keep, q, 0)
        raw = pack_sparse(q, keep, d.view(np.uint16), None if m is None else m.view(np.uint16), fmt, sp_n)
    else:
        raw = pack_weights(q, d.view(np.uint16), None if m is None else m.view(np.uint16), fmt)
    dd = np.repeat(d.astype(np.float64), BLOCK, 1)
    wf = dd * q + (np.repeat(m.astype(np.float64), BLOCK, 1) if m is not None else 0)
    return fmt, raw, np.where(keep, wf, 0.0)


def build(board: boards.Board, op: str, rows: int, cols: int, wbits: int, sp_n: int, seed: int, tokens: int):
    if op not in ("mv", "mm"):
        raise FlightLLMError("kernel: op must be mv or mm")
    if op == "mv" and tokens != 1:
        raise FlightLLMError("kernel mv: --tokens must be 1 (use mm)")
    if rows < 1 or cols < BLOCK or cols % BLOCK:
        raise FlightLLMError(f"kernel: rows must be >= 1 and cols a positive multiple of {BLOCK}")
    if wbits not in board.accel.weight_bits:
        raise FlightLLMError(f"kernel: board {board.name} has no {wbits}-bit weights")
    if sp_n not in board.accel.sparsity_n:
        raise FlightLLMError(f"kernel: board {board.name} has no {sp_n}:16 sparsity")
    if tokens < 1:
        raise FlightLLMError(f"kernel: --tokens must be at least 1 (got {tokens})")
    if tokens * cols > board.accel.qbuf_bytes:
        raise FlightLLMError(f"kernel: {tokens} x {cols} activations do not fit the {board.accel.qbuf_bytes}-byte QBUF")
    rng = np.random.default_rng(seed)
    fmt, raw, wfloat = random_weights(rng, rows, cols, wbits, sp_n)
    x = np.round(rng.standard_normal((tokens, cols)) * (1 << ACT_FRAC)).astype(np.int64)
    x[:, rng.integers(0, cols, max(1, cols // 64))] *= 8          # a few outliers, as real activations have
    xq, xm, xe = sfu_model.quant(x, ACT_FRAC)
    qact = pack_qact(xq, xm, xe)
    tile = row_tile(rows, board.accel.abuf_words // tokens)
    rb = raw.shape[1]
    C = board.accel.weight_channels
    # the engine's weight layout as (address, bytes) pieces and each row tile's waddr: one stored matrix, or with
    # C > 1 channels each tile split on its own (an operand per MV/MM), C page-aligned sections S apart
    if C == 1:
        stored = interleave_rows(raw, fmt, sp_n).reshape(-1)
        pieces, waddr, S = [(0, stored)], {r0: r0 * rb for r0 in range(0, rows, tile)}, 0
        wbytes = stored.nbytes
    else:
        r0s = list(range(0, rows, tile))
        offs, S, pieces = split_layout([(raw[r0: r0 + tile], fmt, sp_n) for r0 in r0s], C, ALIGN, PAGE)
        waddr = dict(zip(r0s, offs))
        wbytes = -(-max(a + b.size for a, b in pieces) // ALIGN) * ALIGN

    mm = MemoryMap()
    rin = mm.add("weights", wbytes + qact.nbytes + ALIGN, writable=False)
    x_addr = rin.base + -(-wbytes // ALIGN) * ALIGN
    out = mm.add("out", rows * tokens * 4, writable=True)
    prog = [make(Op.LD, fmt=LdFmt.QACT, dst=0, addr=x_addr, rows=tokens, cols=cols, src_stride=qact.shape[1],
                 dst_stride=cols)]
    for r0 in range(0, rows, tile):
        n = min(tile, rows - r0)
        prog.append(make(Op.MV if op == "mv" else Op.MM, fmt=fmt, sp_n=sp_n, waddr=rin.base + waddr[r0],
                         wstride=rb, rows=n, cols=cols, tokens=tokens, xaddr=0, xstride=cols, yaddr=0, ystride=n,
                         split=int(C > 1)))
        prog.append(make(Op.ST, fmt=StFmt.I32, src=0, addr=out.base + r0 * 4, rows=tokens, cols=n, src_stride=n,
                         dst_stride=rows * 4, elem_stride=4))
    prog.append(make(Op.SYS, fn=SysOp.END))
    words = assemble(prog)
    pr = mm.add("program", words.nbytes, writable=False, executable=True)
    img = np.zeros(mm.top, np.uint8)
    for a, b in pieces:
        img[rin.base + a: rin.base + a + b.size] = b
    img[x_addr: x_addr + qact.nbytes] = qact.reshape(-1)
    img[pr.base: pr.base + words.nbytes] = words.view(np.uint8)
    ref = mpe_model.mm(mpe_model.Weights(*unpack_weights(raw, fmt, sp_n, rows, cols), fmt), xq, xm, xe)
    # bytes read: every channel's payload (padding rows included) and the activations
    return dict(image=img, memmap=mm, prog_addr=pr.base, out=out.base, ref=ref, x=x, wfloat=wfloat, split_stride=S,
                bytes_read=sum(b.size for _, b in pieces) + qact.nbytes)


def _execute(backend: str, board: boards.Board, k: dict, rows: int, tokens: int):
    """Run the kernel's image: fsim directly, or the RTL through the same pynq driver the runtime uses.
    Returns (outputs, stats, host seconds of the program's run: build and load excluded)."""
    img, out = k["image"], k["out"]
    if backend == "fsim":
        from flightllm.sim.fsim import FunctionalSim

        dev = FunctionalSim(board, img.size, k["memmap"], k["split_stride"])
        dev.mem[:] = img
        t0 = time.perf_counter()
        st = dev.run(k["prog_addr"], 0)
        wall = time.perf_counter() - t0
        y = dev.mem[out: out + rows * tokens * 4].copy()
    elif backend == "rtl":
        from flightllm.host.driver import Accelerator
        from flightllm.sim.pynq_device import SimulatedDevice

        acc = Accelerator(SimulatedDevice.configure(board, "rtl", img.size))
        try:
            acc.load(img, img.size, k["memmap"], k["split_stride"])
            t0 = time.perf_counter()
            st = acc.run(k["prog_addr"], 0)
            wall = time.perf_counter() - t0
            y = acc.read_mem(out, rows * tokens * 4)
        finally:
            acc.close()
    else:
        raise FlightLLMError(f"kernel: unknown backend '{backend}' (fsim or rtl)")
    return y.view("<i4").reshape(tokens, rows), st, wall


def run(op: str = "mv", backend: str = "fsim", board: str = "sim", rows: int = 1536, cols: int = 576,
        wbits: int = 4, sparsity: int = 16, seed: int = 0, tokens: int = 1) -> dict:
    b = boards.load(board)
    k = build(b, op, rows, cols, wbits, sparsity, seed, tokens)
    y_f, st_f, wall_f = _execute("fsim", b, k, rows, tokens)
    if backend == "fsim":
        y, st, wall, exact = y_f, st_f, wall_f, bool(np.array_equal(y_f, k["ref"]))
    else:
        y, st, wall = _execute(backend, b, k, rows, tokens)
        exact = bool(np.array_equal(y, y_f))
    fl = (k["x"].astype(np.float64) / (1 << ACT_FRAC)) @ k["wfloat"].T
    roof = int(np.ceil(k["bytes_read"] / b.mem_bytes_per_cycle))
    res = {"bit_exact": exact, "max_abs_err_vs_float": float(np.abs(y / (1 << ACT_FRAC) - fl).max()),
           "cycles": int(st.cycles), "roofline_cycles": roof, "efficiency": round(roof / st.cycles, 4),
           "op": op, "backend": backend, "board": b.name, "rows": rows, "cols": cols, "wbits": wbits,
           "sparsity": f"{sparsity}:16", "tokens": tokens, "weight_bytes": int(rows * row_bytes(
               WFmt.Q4_1 if wbits == 4 else WFmt.Q8_0, cols, sparsity))}
    res["bytes_read"], res["bytes_written"] = int(st.bytes_read), int(st.bytes_written)     # the device's counters
    # how fast the chosen backend simulates on this host (the program's run only; host-dependent, unlike the
    # simulated figures above)
    res["host_run_s"] = round(wall, 4)
    res["host_sim_cycles_per_s"] = round(st.cycles / wall) if wall > 0 else None
    if backend != "fsim":
        res["fsim_cycles"] = int(st_f.cycles)
        res["fsim_bytes"] = [int(st_f.bytes_read), int(st_f.bytes_written)]
        res["cycle_model_error"] = round(abs(st_f.cycles - st.cycles) / st.cycles, 4)
    return res
