"""Cycle model of the accelerator, per instruction, from the board config alone.

Execution is in order: an instruction's cycles are its issue overhead, plus the larger of its memory time
(bytes / the board's bytes per cycle) and its compute time, plus a pipeline drain. The RTL is held to these
figures (within 2%); change both together.
"""
from __future__ import annotations

from flightllm.boards import Board
from flightllm.isa import MiscOp

ISSUE = 2                    # fetch/decode of one instruction
SFU_PASSES = {MiscOp.COPY: 1, MiscOp.ADD: 1, MiscOp.RMSNORM: 2, MiscOp.SOFTMAX: 3, MiscOp.SILU_MUL: 1,
              MiscOp.ROPE: 1, MiscOp.QUANT: 2, MiscOp.ARGMAX: 1}
SFU_ROW_LATENCY = {MiscOp.RMSNORM: 48, MiscOp.SOFTMAX: 72, MiscOp.QUANT: 4}   # isqrt / divide per row
SFU_PIPE = 8


class CycleModel:
    def __init__(self, board: Board):
        self.bpc = board.mem_bytes_per_cycle
        self.lat = board.memory.latency_cycles
        self.macs = board.accel.macs_per_cycle
        self.chain = board.accel.chain_length
        self.lanes = board.accel.sfu_lanes
        self.port = board.memory.port_bytes

    def _mem(self, nbytes: int) -> int:
        return -(-int(nbytes) // int(self.bpc)) if self.bpc >= 1 else int(nbytes / self.bpc + 0.999999)

    def mm(self, wbytes: int, rows: int, cols: int, tokens: int, sp_n: int) -> int:
        compute = -(-rows * (cols * sp_n // 16) * tokens // self.macs)
        return ISSUE + self.lat + max(self._mem(wbytes), compute) + self.chain

    def transfer(self, nbytes: int, rows: int, contiguous: bool, elems: int) -> int:
        """LD/ST: one burst per row when contiguous; one beat per element when scattered (V^T writes)."""
        beats = self._mem(nbytes) if contiguous else elems
        return ISSUE + self.lat + beats + (rows if contiguous else 0)

    def misc(self, fn: MiscOp, rows: int, n: int) -> int:
        per_row = -(-n // self.lanes) * SFU_PASSES[fn] + SFU_ROW_LATENCY.get(fn, 0)
        return ISSUE + SFU_PIPE + rows * per_row

    @staticmethod
    def sys() -> int:
        return ISSUE
