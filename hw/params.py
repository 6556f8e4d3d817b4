"""Engine geometry derived from the board config, shared by the RTL generator and the cycle model (pure Python).

The weight stream is cut into *groups*: up to ``lanes`` consecutive 32-weight blocks per cycle, one block per
lane. Every lane is a fixed 32-product block datapath (16 DSP stages of two products, hw/mpe.py) whatever the
format: an N:16 block uses its first 2N products. ``lanes`` is the fewest blocks per cycle that keep up with the
memory port (ceil(port_bytes / block_bytes)), capped by the lanes the DSP stages hold (slots // 32), so the
sparse modes with small blocks (N = 2, 4) are compute-bound at that cap.
"""
from __future__ import annotations

from flightllm.formats import BLOCK, QACT_BLOCK_BYTES, block_bytes
from flightllm.isa import WFmt

MODES: list[tuple[int, int]] = [(int(f), n) for f in (WFmt.Q4_1, WFmt.Q8_0) for n in (16, 8, 4, 2)] + [(int(WFmt.I16), 16)]


def mode_index(fmt: int, sp_n: int) -> int:
    return MODES.index((int(fmt), int(sp_n)))


def products(fmt: int, sp_n: int) -> int:
    return BLOCK if sp_n == 16 else 2 * sp_n


def slots(board) -> int:
    a = board.accel
    return a.chains * a.chain_length * a.macs_per_dsp


def lanes(board, fmt: int, sp_n: int) -> int:
    bb = block_bytes(fmt, sp_n)
    port = board.memory.port_bytes
    return max(1, min(-(-port // bb), slots(board) // BLOCK))


def max_lanes(board) -> int:
    return max(lanes(board, f, n) for f, n in MODES)


def window_bytes(board) -> int:
    """Bytes the extractor must present at once: the widest group, a QACT block, or one beat."""
    return max([lanes(board, f, n) * block_bytes(f, n) for f, n in MODES] + [QACT_BLOCK_BYTES, 4])


def token_tile(board) -> int:
    """Tokens an MM pass keeps accumulators for; more tokens re-stream the weights once per tile."""
    return max(board.accel.prefill_buckets)


def stream_buffer_bytes(board) -> int:
    """Byte buffer between the AXI read port and the extractor: a window plus room for a beat, in whole beats."""
    p = board.memory.port_bytes
    need = window_bytes(board) + 2 * p
    return -(-need // p) * p


def groups(board, fmt: int, sp_n: int, rows: int, nb: int, merged: bool) -> int:
    """Number of groups (issue cycles per token) the extractor forms for a rows x nb-block weight stream."""
    k = lanes(board, fmt, sp_n)
    if not merged:
        return rows * -(-nb // k)
    total = rows * nb
    if nb >= k:
        return -(-total // k)
    g, b0, left = 0, 0, total
    seen = {}
    while left > 0:
        if b0 in seen and left > 0:          # periodic: jump whole periods
            g0, left0 = seen[b0]
            per_g, per_b = g - g0, left0 - left
            if per_b > 0:
                n = (left - 1) // per_b
                g += n * per_g
                left -= n * per_b
                seen = {}
                if left <= 0:
                    break
        seen[b0] = (g, left)
        rem = nb - b0
        kp = min(k, rem + nb - 1, left)
        b0 = b0 + kp
        b0 -= nb if b0 >= nb else 0
        left -= kp
        g += 1
    return g
