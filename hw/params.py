"""Engine geometry derived from the board config, shared by the RTL generator and the cycle model (pure Python).

The weight stream is cut into *groups*: up to ``units`` consecutive units per cycle. A unit is one 32-weight block,
except for the paired formats (dense Q4_1 / Q8_0, ``formats.paired``), whose unit is block b of two rows (stored
row-pair interleaved): each DSP multiplies one activation by both rows' weights packed into its 27-bit operand
(hw/mpe.py). The engine has chains of 16 DSP stages; a paired unit takes two chains (32 activations x 2 rows), a
sparse N:16 block (2N <= 16 products) one chain, an I16 block (32 products, one per DSP) two chains. ``lanes`` is
the blocks a group holds (2 per paired unit): the fewest units that keep up with the memory port
(ceil(port_bytes / unit bytes)), capped by the DSPs (slots // 64 units of 64 products for the paired formats and
I16, slots // 32 sparse blocks), so the sparse modes with small blocks (N = 2, 4) are compute-bound at that cap.
"""
from __future__ import annotations

from flightllm.formats import BLOCK, QACT_BLOCK_BYTES, block_bytes, paired
from flightllm.isa import WFmt

MODES: list[tuple[int, int]] = [(int(f), n) for f in (WFmt.Q4_1, WFmt.Q8_0) for n in (16, 8, 4, 2)] + [(int(WFmt.I16), 16)]


def mode_index(fmt: int, sp_n: int) -> int:
    return MODES.index((int(fmt), int(sp_n)))


def products(fmt: int, sp_n: int) -> int:
    return BLOCK if sp_n == 16 else 2 * sp_n


def slots(board) -> int:
    a = board.accel
    return a.chains * a.chain_length * a.macs_per_dsp


def unit_blocks(fmt: int, sp_n: int) -> int:
    """Blocks per unit: 2 (block b of a row pair) for the paired formats, else 1."""
    return 2 if paired(fmt, sp_n) else 1


def unit_bytes(fmt: int, sp_n: int) -> int:
    return unit_blocks(fmt, sp_n) * block_bytes(fmt, sp_n)


def units(board, fmt: int, sp_n: int) -> int:
    """Units a group holds (one per cycle and token)."""
    port = board.memory.port_bytes
    wide = paired(fmt, sp_n) or int(fmt) == int(WFmt.I16)
    cap = slots(board) // (2 * BLOCK if wide else BLOCK)
    return max(1, min(-(-port // unit_bytes(fmt, sp_n)), cap))


def lanes(board, fmt: int, sp_n: int) -> int:
    """Blocks a group holds (the engine's block slots in use)."""
    return unit_blocks(fmt, sp_n) * units(board, fmt, sp_n)


def chains_used(board, fmt: int, sp_n: int) -> int:
    """16-stage DSP chains a group occupies: two per paired unit or I16 block, one per sparse block."""
    wide = paired(fmt, sp_n) or int(fmt) == int(WFmt.I16)
    return (2 if wide else 1) * units(board, fmt, sp_n)


def n_chains(board) -> int:
    return max(chains_used(board, f, n) for f, n in MODES)


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
    """Number of groups (issue cycles per token) the extractor forms for a weight stream of ``rows`` stream rows
    (row pairs for the paired formats, ``formats.weight_stream``) of nb units each."""
    k = units(board, fmt, sp_n)
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
