"""Host runtime: loads a compiled artifact onto a device and runs forward passes on it.

A device offers write_mem / read_mem / run(program address, POS): the functional simulator called directly
(``fsim``), or host/driver.py's Accelerator over pynq — the Verilator model of the RTL behind pynq's Device
interface (``rtl``) or a real board (``board``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from flightllm import boards
from flightllm.errors import FlightLLMError
from flightllm.formats import ACT_FRAC
from flightllm.compiler.artifact import Artifact
from flightllm.compiler.validate import check_artifact
from flightllm.sim.fsim import RunStats

BACKENDS = ("fsim", "rtl", "board")


@dataclass
class ForwardStats(RunStats):
    chunks: list = field(default_factory=list)     # (tokens, cycles) per program run


def split_buckets(n: int, buckets: list[int]) -> list[int]:
    """Cover n tokens with the fewest runs of compiled bucket sizes (largest first; 1 is always there)."""
    out = []
    for b in sorted(buckets, reverse=True):
        while n >= b:
            out.append(b)
            n -= b
    return out


class DirectSim:
    """The functional simulator called directly: the fast path for `--backend fsim`."""

    def __init__(self, board: boards.Board, art: Artifact):
        from flightllm.sim.fsim import FunctionalSim

        self.sim = FunctionalSim(board, art.mem_size, art.memmap, art.split_stride)
        self.sim.write(0, art.image)

    def write_mem(self, addr: int, data: np.ndarray) -> None:
        self.sim.write(addr, data)

    def read_mem(self, addr: int, n: int) -> np.ndarray:
        return self.sim.mem[addr: addr + n].copy()

    def run(self, addr: int, pos: int):
        return self.sim.run(addr, pos)

    def close(self):
        pass


def open_device(backend: str, board: boards.Board, art: Artifact):
    """fsim: the simulator directly. rtl: the Verilator model behind pynq's Device interface, driven by the
    same driver as a board. board: the first real device pynq finds."""
    if backend == "fsim":
        return DirectSim(board, art)
    if backend not in ("rtl", "board"):
        raise FlightLLMError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    from flightllm.host.driver import Accelerator

    if backend == "rtl":
        from flightllm.sim.pynq_device import SimulatedDevice

        dev = SimulatedDevice.configure(board, "rtl", art.mem_size)
    else:
        dev = find_board()
    acc = Accelerator(dev)
    acc.load(art.image, art.mem_size, art.memmap, art.split_stride)
    return acc


def find_board():
    """The first real FPGA device pynq can see, or a one-line error."""
    import warnings

    from pynq.pl_server.device import Device

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            devs = [d for d in Device.devices if not type(d).__name__.startswith("SimulatedDevice")]
        except Exception as e:  # noqa: BLE001 - pynq's probes raise assorted errors without hardware
            raise FlightLLMError(f"backend 'board': pynq could not probe devices ({e})") from None
    if not devs:
        raise FlightLLMError("backend 'board': no FPGA board found (pynq sees no device)")
    return devs[0]


class Runtime:
    def __init__(self, art: Artifact, backend: str = "fsim", device=None, board: boards.Board | None = None):
        """``board``: the one the artifact was compiled for, when it is not a named board (a board file's path,
        e.g. tests/boards); by default the board its header names."""
        self.art = art
        h = art.header
        self.board = board if board is not None else boards.load(h["board"])
        # the programs were checked against the board file's buffers and channels at compile time (a header
        # read from a file holds JSON lists where a freshly compiled one holds tuples: compare as JSON)
        if self.board.name != h["board"]:
            raise FlightLLMError(f"the artifact is compiled for board {h['board']}, not {self.board.name}")
        if json.dumps(self.board.to_dict(), sort_keys=True) != json.dumps(h["board_config"], sort_keys=True):
            raise FlightLLMError(f"the artifact was compiled for another configuration of board {self.board.name} "
                                 f"(its board file has changed since); recompile it")
        self.backend = backend
        self.ctx = int(h["ctx"])
        self.vocab = int(h["model"]["vocab"])
        self.buckets = list(h["buckets"])
        self.io = h["io"]
        check_artifact(art, self.board)          # nothing malformed reaches a device
        self.dev = device if device is not None else open_device(backend, self.board, art)

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
            self.dev.write_mem(self.io["tokens"], np.asarray(tokens[i: i + T], dtype="<i4"))
            prog = self.art.program(f"{'all' if all_logits else 'fwd'}{T}")
            rs = self.dev.run(prog["addr"], pos + i)
            st.add(rs)
            st.chunks.append((T, rs.cycles))
            rows = T if all_logits else 1
            lg = self.dev.read_mem(self.io["logits"], 4 * rows * self.vocab).view("<i4")
            outs.append(lg.reshape(rows, self.vocab).astype(np.float32) / (1 << ACT_FRAC))
            i += T
        logits = np.concatenate(outs) if all_logits else outs[-1]
        return logits, st

    def close(self):
        self.dev.close()
