"""Engine geometry derived from the board config, shared by the RTL generator and the cycle model (pure Python).

The weight stream is cut into *groups*: up to ``units`` consecutive units per cycle. A unit is one 32-weight block,
except for the paired formats (dense Q4_1 / Q8_0, ``formats.paired``), whose unit is block b of two rows (stored
row-pair interleaved): each DSP multiplies one activation by both rows' weights packed into its 27-bit operand
(hw/mpe.py). The engine has chains of ``STAGES`` (16) DSP stages; a paired unit takes two chains (32 activations x
2 rows), an I16 block (32 products, one per DSP) two chains, and sparse N:16 blocks (2N <= 16 products) sit side by
side in a chain: ``chain_blocks`` = 16 / (2N) of them (N = 2: 4, N = 4: 2, N = 8: 1), each read at its own
reduction tap (FlightLLM's reduction nodes: the cascade is cut after every 2N stages, hw/mpe.py ``dsp_chain``).
``lanes`` is the blocks a group holds (2 per paired unit): the fewest units that keep up with the memory port
(ceil(port_bytes / unit bytes)), capped by what the chains and their taps hold. The engine's block slots
(``max_lanes``: one QBUF read port, one weight decode + sparse MUX and one dequantiser each) are the most any mode
uses, so on a 64-byte port every mode is memory-bound (sim: 8 slots, for 2:16's 8-byte blocks). A board may cap
them (``accel.block_slots``): each slot costs a QBUF read port, a weight decode + sparse MUX and a dequantiser
(PYNQ-Z2: ~20 DSP48E1 and ~2.4k LUT a slot), which a board whose memory cannot feed them should not pay for.
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


STAGES = BLOCK // 2          # DSP stages of one engine chain (hw/mpe.py); a board's chain_length counts in stages
TAP = 4                      # stages between two reduction taps: the shortest sparse block (N = 2: 4 products)


def dsp_chains(board) -> int:
    """Engine chains (of STAGES stages) the board's DSP stages make."""
    a = board.accel
    return a.chains * a.chain_length // STAGES


def sparse(fmt: int, sp_n: int) -> bool:
    return int(fmt) != int(WFmt.I16) and int(sp_n) != 16


def chain_blocks(fmt: int, sp_n: int) -> int:
    """Blocks one chain holds: sparse N:16 blocks (2N products) side by side, one per reduction tap group
    (16 / (2N): N = 2 -> 4, N = 4 -> 2, N = 8 -> 1); 1 for the others (a paired unit / I16 block takes 2 chains)."""
    return STAGES // products(fmt, sp_n) if sparse(fmt, sp_n) else 1


def unit_blocks(fmt: int, sp_n: int) -> int:
    """Blocks per unit: 2 (block b of a row pair) for the paired formats, else 1."""
    return 2 if paired(fmt, sp_n) else 1


def unit_bytes(fmt: int, sp_n: int) -> int:
    return unit_blocks(fmt, sp_n) * block_bytes(fmt, sp_n)


def units(board, fmt: int, sp_n: int) -> int:
    """Units a group holds (one per cycle and token)."""
    port = board.memory.port_bytes
    ch = dsp_chains(board)
    cap = ch * chain_blocks(fmt, sp_n) if sparse(fmt, sp_n) else ch // 2
    if board.accel.block_slots:              # the board's cap on the block slots (lanes = unit_blocks * units)
        cap = min(cap, board.accel.block_slots // unit_blocks(fmt, sp_n))
    return max(1, min(-(-port // unit_bytes(fmt, sp_n)), cap))


def lanes(board, fmt: int, sp_n: int) -> int:
    """Blocks a group holds (the engine's block slots in use)."""
    return unit_blocks(fmt, sp_n) * units(board, fmt, sp_n)


def chains_used(board, fmt: int, sp_n: int) -> int:
    """Engine chains a group occupies: two per paired unit or I16 block; sparse blocks fill chains in slot order,
    ``chain_blocks`` per chain (slot k on chain k // chain_blocks)."""
    if sparse(fmt, sp_n):
        return -(-units(board, fmt, sp_n) // chain_blocks(fmt, sp_n))
    return 2 * units(board, fmt, sp_n)


def n_chains(board) -> int:
    return max(chains_used(board, f, n) for f, n in MODES)


def max_lanes(board) -> int:
    """The engine's block slots: the most blocks any mode's group holds."""
    return max(lanes(board, f, n) for f, n in MODES)


def slot_products(board, k: int) -> int:
    """Products block slot k ever feeds (its weight decode + sparse MUX is built for these only): 32 where a
    dense or I16 mode uses the slot, 2N for slots only the sparse modes reach (sim: slots 4..7, 8 products)."""
    return max([products(f, n) for f, n in MODES if k < lanes(board, f, n)] + [0])


def chain_taps(board, c: int) -> int:
    """Reduction taps chain c needs: the most sparse blocks any mode puts on it (1, 2 or 4)."""
    return max([chain_blocks(f, n) for f, n in MODES
                if sparse(f, n) and c * chain_blocks(f, n) < lanes(board, f, n)] + [1])


def abuf_banks(board) -> int:
    """ABUF banks: one per port word unless the board asks for more (``accel.abuf_banks``), as it must when its
    weight channels' engines write more than a port's words of output rows a cycle (two each)."""
    return board.accel.abuf_banks or board.memory.port_bytes // 4


def sfu_width(board) -> int:
    """SFU elements per cycle (hw/sfu.py, docs/sfu.md): ``accel.sfu_lanes``, capped by the ABUF banks (W consecutive
    words from any address then fall in W distinct banks, so one SFU request never conflicts with itself) and by a
    32-element block (the quantiser's W dividers share a block)."""
    return max(1, min(board.accel.sfu_lanes, abuf_banks(board), BLOCK))


def ld_words(board) -> int:
    """Words an LD I32 writes a cycle (hw/top.py LD_RUN, through the SFU's W-word bank port): the SFU's width, capped
    by the port's words. A beat a cycle is all the stream brings, and a chunk of more words would need a window of
    that many bytes (U280: 32 words, 128 bytes, where the engine's groups need 80)."""
    return min(sfu_width(board), board.memory.port_bytes // 4)


def window_bytes(board) -> int:
    """Bytes the extractor must present at once: the widest group, a QACT block, or one beat."""
    return max([lanes(board, f, n) * block_bytes(f, n) for f, n in MODES] + [QACT_BLOCK_BYTES, 4])


def fetch_beats(board) -> int:
    """Beats of one instruction fetch (hw/top.py FETCH): enough that the longest instruction (MAX_WORDS words)
    starting at any word of the first beat is inside the line (64-byte port: 2, 16-byte port: 3)."""
    from flightllm.hw.decoder import MAX_WORDS

    p = board.memory.port_bytes
    return -(-(p - 4 + 4 * MAX_WORDS) // p)


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
