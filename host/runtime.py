"""Host runtime: loads a compiled artifact onto a device and runs forward passes on it.

A device is anything with device memory, the POS register and "run the program at address A": the functional
simulator (``fsim``) today; the Verilator model of the RTL behind pynq's Device interface (``rtl``) and a real
board through PYNQ (``board``) plug in behind the same calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flightllm import boards
from flightllm.errors import FlightLLMError
from flightllm.formats import ACT_FRAC
from flightllm.compiler.artifact import Artifact

BACKENDS = ("fsim", "rtl", "board")


@dataclass
class ForwardStats:
    cycles: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    instructions: int = 0
    chunks: list = field(default_factory=list)     # (tokens, cycles) per program run


def split_buckets(n: int, buckets: list[int]) -> list[int]:
    """Cover n tokens with the fewest runs of compiled bucket sizes (largest first; 1 is always there)."""
    out = []
    for b in sorted(buckets, reverse=True):
        while n >= b:
            out.append(b)
            n -= b
    return out


def open_device(backend: str, board: boards.Board, art: Artifact):
    if backend == "fsim":
        from flightllm.sim.fsim import FunctionalSim

        dev = FunctionalSim(board, art.mem_size, art.memmap)
        dev.mem[: art.image.size] = art.image
        return dev
    if backend == "rtl":
        raise FlightLLMError("backend 'rtl': whole-model decode on the RTL is not available yet "
                             "(the matrix engine runs on Verilator through `flightllm kernel --backend rtl`)")
    if backend == "board":
        raise FlightLLMError("backend 'board': no FPGA board found (pynq sees no device)")
    raise FlightLLMError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")


class Runtime:
    def __init__(self, art: Artifact, backend: str = "fsim"):
        self.art = art
        self.board = boards.load(art.header["board"])
        self.backend = backend
        self.ctx = int(art.header["ctx"])
        self.vocab = int(art.header["model"]["vocab"])
        self.buckets = list(art.header["buckets"])
        self.io = art.header["io"]
        self.dev = open_device(backend, self.board, art)

    def check_length(self, n_tokens: int) -> None:
        if n_tokens > self.ctx:
            raise FlightLLMError(f"{n_tokens} tokens exceed the compiled context length {self.ctx} "
                                 f"(model/board limit; shorten the prompt, lower -n, or compile with a larger --ctx)")

    def forward(self, tokens: list[int], pos: int, all_logits: bool = False) -> tuple[np.ndarray, ForwardStats]:
        """Run ``tokens`` at positions pos.. ; returns float logits (len(tokens) or 1, vocab) and stats."""
        self.check_length(pos + len(tokens))
        if any(not 0 <= t < self.vocab for t in tokens):
            raise FlightLLMError(f"token id out of range [0, {self.vocab})")
        st = ForwardStats()
        outs = []
        i = 0
        for T in split_buckets(len(tokens), self.buckets):
            chunk = np.asarray(tokens[i: i + T], dtype="<i4")
            self.dev.mem[self.io["tokens"]: self.io["tokens"] + 4 * T] = chunk.view(np.uint8)
            prog = self.art.program(f"{'all' if all_logits else 'fwd'}{T}")
            rs = self.dev.run(prog["addr"], pos + i)
            st.cycles += rs.cycles
            st.bytes_read += rs.bytes_read
            st.bytes_written += rs.bytes_written
            st.instructions += rs.instructions
            st.chunks.append((T, rs.cycles))
            rows = T if all_logits else 1
            lg = self.dev.mem[self.io["logits"]: self.io["logits"] + 4 * rows * self.vocab].view("<i4")
            outs.append(lg.reshape(rows, self.vocab).astype(np.float32) / (1 << ACT_FRAC))
            i += T
        logits = np.concatenate(outs) if all_logits else outs[-1]
        return logits, st
