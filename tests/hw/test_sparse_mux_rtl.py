"""One lane's weight decode + N:16 sparse MUX (hw/mpe.py LaneSelect) in Verilator (cocotb,
tests/hw/sparse_mux_cocotb.py) vs a model built on formats.unpack_weights."""
from __future__ import annotations

import pytest

from sfu_rtl_util import build, have_verilator, run

pytestmark = [pytest.mark.rtl, pytest.mark.skipif(not have_verilator(), reason="needs amaranth, cocotb, verilator")]

NAME = "blk_sparse_mux"


def test_sparse_mux():
    from block_benches import sparse_mux_bench

    runner, bdir = build(*sparse_mux_bench(), NAME)
    run(runner, bdir, NAME, "sparse_mux_cocotb", "lanes")
