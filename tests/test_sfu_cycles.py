"""SFU width and cycle formula (pure Python; the RTL is checked against them in tests/hw/test_sfu_rtl_seq.py)."""
from __future__ import annotations

import pytest

from flightllm import boards
from flightllm.isa import MiscOp
from flightllm.hw.params import abuf_banks, ld_words, sfu_width
from flightllm.sim.sfu_cycles import SFU_FIXED, SFU_PASS_OVERHEAD, sfu_cycles


@pytest.mark.parametrize("name", boards.names())
def test_width_fits_abuf_banks(name):
    b = boards.load(name)
    w = sfu_width(b)
    assert 2 <= w <= 32 and w & (w - 1) == 0
    assert w <= b.accel.sfu_lanes and w <= abuf_banks(b)
    # LD I32 writes through the SFU's bank port, at most a beat's words a cycle
    assert 1 <= ld_words(b) <= min(w, b.memory.port_bytes // 4)


def test_width_follows_the_abuf_banks():
    # the U280 and VHK158 have 32 banks behind their 16-word ports: a 32-lane SFU (the board files ask for 64)
    assert sfu_width(boards.load("u280")) == 32 == sfu_width(boards.load("vhk158"))
    assert ld_words(boards.load("u280")) == 16
    assert sfu_width(boards.load("sim")) == 16 and sfu_width(boards.load("kv260")) == 4


def test_cycle_formula_shape():
    W = 16
    # one pass, one read per chunk: chunks + pass overhead per row
    assert sfu_cycles(W, MiscOp.COPY, 3, 576) == SFU_FIXED + 3 * (36 + SFU_PASS_OVERHEAD)
    # two operands double the reads; RMSNORM adds its bit-serial row latency
    assert sfu_cycles(W, MiscOp.ADD, 1, 576) - SFU_FIXED == 72 + SFU_PASS_OVERHEAD
    assert sfu_cycles(W, MiscOp.RMSNORM, 1, 576) > sfu_cycles(W, MiscOp.ADD, 1, 576) + 150
    # QUANT walks whole 32-blocks; ROPE chunks stop at head boundaries
    assert sfu_cycles(W, MiscOp.QUANT, 1, 33) == sfu_cycles(W, MiscOp.QUANT, 1, 64)
    assert sfu_cycles(W, MiscOp.ROPE, 1, 24, 8) == SFU_FIXED + 3 * 3 + SFU_PASS_OVERHEAD
    assert sfu_cycles(W, MiscOp.ARGMAX, 0, 10) == SFU_FIXED


def test_quant_tail():
    # W dividers: a block is quantised in 32 / W cycles after its last chunk; the instruction's done cycle waits for
    # the last block's write past the usual drain (docs/sfu.md): + max(0, 32 / W - 3), 0 at W >= 16
    def body(W, rows, n):
        return SFU_FIXED + rows * (-(-n // 32) * (32 // W) + SFU_PASS_OVERHEAD)

    assert sfu_cycles(16, MiscOp.QUANT, 3, 576) == body(16, 3, 576)
    assert sfu_cycles(32, MiscOp.QUANT, 1, 64) == body(32, 1, 64)
    assert sfu_cycles(8, MiscOp.QUANT, 2, 64) == body(8, 2, 64) + 1
    assert sfu_cycles(2, MiscOp.QUANT, 1, 576) == body(2, 1, 576) + 13
    assert sfu_cycles(2, MiscOp.QUANT, 0, 576) == SFU_FIXED
