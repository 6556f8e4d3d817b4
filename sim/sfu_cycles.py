"""Exact cycle count of the special function unit (hw/sfu.py, docs/sfu.md), pure Python.

W = hw/params.py sfu_width(board) elements per cycle. Each pass over a row issues one W-word ABUF read per operand per
chunk, then drains the 2-stage cores (SFU_PASS_OVERHEAD cycles: read latency, two core stages, one
sequencing cycle). Per-row scalar steps are bit-serial: RMSNORM = ss // n (63 quotient bits) + isqrt (44 root
bits) + 2^62 // s (51), SOFTMAX = 2^61 // sum (32), each plus one hand-over cycle. QUANT has W dividers: a block
is quantised in 32 / W cycles after its last chunk, overlapped with the next block's chunks; the instruction ends
once the last block's q are written (``QUANT_SLACK``).
"""
from __future__ import annotations

from flightllm.isa import MiscOp

SFU_READS = {MiscOp.COPY: (1,), MiscOp.ADD: (2,), MiscOp.RMSNORM: (1, 2), MiscOp.SOFTMAX: (1, 1, 1),
             MiscOp.SILU_MUL: (2,), MiscOp.ROPE: (3,), MiscOp.QUANT: (1,), MiscOp.ARGMAX: (1,)}
SFU_ROW_LATENCY = {MiscOp.RMSNORM: (63 + 1) + (44 + 1) + (51 + 1), MiscOp.SOFTMAX: 32 + 1}
SFU_PASS_OVERHEAD = 4
SFU_FIXED = 3                 # start cycle, first-row set-up, the done cycle
QUANT_SLACK = 3               # QUANT: the quantiser (W dividers) takes 32 / W cycles for a block after its last
                              # chunk; the last block's q are written 32 / W + 2 cycles after its last read, and
                              # the done cycle waits for them past the usual drain (DRAIN + POST = 4 cycles)


def sfu_cycles(W: int, fn: MiscOp, rows: int, n: int, imm: int | None = None) -> int:
    """Cycles from the SFU's start cycle to its done cycle, both included, for one MISC instruction.

    n: elements per row (resolved, POS added); SOFTMAX: the row width (n + rows - 1 when causal), as
    ``CycleModel.misc`` receives it. imm: ROPE's head dim (chunks never straddle a head); without it the head
    dim is taken as a multiple of W.
    """
    fn = MiscOp(fn)
    if rows <= 0 or n <= 0:
        return SFU_FIXED
    if fn == MiscOp.QUANT:
        chunks = -(-n // 32) * (32 // W)
    elif fn == MiscOp.ROPE and imm:
        chunks = (n // imm) * -(-imm // W)
    else:
        chunks = -(-n // W)
    per_row = sum(chunks * r + SFU_PASS_OVERHEAD for r in SFU_READS[fn]) + SFU_ROW_LATENCY.get(fn, 0)
    tail = max(0, 32 // W - QUANT_SLACK) if fn == MiscOp.QUANT else 0
    return SFU_FIXED + rows * per_row + tail
