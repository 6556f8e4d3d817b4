"""Board definitions: one TOML file per board, read through :func:`load`.

Everything the RTL generator, compiler, simulators and runtime know about a board (memory system, clock,
resources, the accelerator shape chosen for it) comes from these files; derived figures are properties here,
so no other module restates a constant.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from flightllm.errors import FlightLLMError

BOARD_DIR = Path(__file__).resolve().parent


class BoardError(FlightLLMError):
    pass


@dataclass(frozen=True)
class Memory:
    kind: str
    channels: int
    port_bytes: int
    channel_gbps: float
    capacity_mib: int
    latency_cycles: int
    ddr_gib: int = 0


@dataclass(frozen=True)
class Accel:
    chains: int
    chain_length: int
    macs_per_dsp: int
    weight_bits: tuple[int, ...]
    sparsity_n: tuple[int, ...]
    sfu_lanes: int
    abuf_words: int
    qbuf_bytes: int
    max_context: int
    prefill_buckets: tuple[int, ...]
    block_slots: int = 0      # cap on the engine's block slots (hw/params.py max_lanes); 0: what port and chains allow
    weight_channels: int = 1  # memory channels an MV/MM with ``split`` streams in lockstep, one master and datapath each
    abuf_banks: int = 0       # ABUF banks (one 32-bit word each a cycle); 0: one per port word (hw/params.py abuf_banks)

    @property
    def dsps(self) -> int:
        """DSP stages of the chains, all weight channels together (each channel has its own engine)."""
        return self.chains * self.chain_length * self.weight_channels

    @property
    def macs_per_cycle(self) -> int:
        return self.dsps * self.macs_per_dsp


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    family: str
    part: str
    clock_mhz: float
    memory: Memory
    accel: Accel
    resources: dict = field(default_factory=dict)
    shell: dict = field(default_factory=dict)
    platform: str = ""
    board_part: str = ""      # Vivado board part (board files) for block-design flows; optional
    path: Path | None = None

    @property
    def channel_bytes_per_cycle(self) -> float:
        """What one channel delivers per accelerator cycle: the port width, or less where the channel is slower."""
        phys = self.memory.channel_gbps * 1e3 / self.clock_mhz
        return min(float(self.memory.port_bytes), phys)

    @property
    def mem_bytes_per_cycle(self) -> float:
        return self.memory.channels * self.channel_bytes_per_cycle

    @property
    def beat_period(self) -> int | None:
        """Cycles per port-wide beat a memory channel delivers to its master: 1 where it keeps up with the
        port, port_bytes / channel_bytes_per_cycle where it is slower (PYNQ-Z2: 2), None where that is not a whole
        number (no beat model: sim/cycles.py keeps the byte rate, the RTL harness refuses the board)."""
        r = self.memory.port_bytes / self.channel_bytes_per_cycle
        if r <= 1:
            return 1
        return round(r) if abs(r - round(r)) < 1e-9 else None

    @property
    def bandwidth_gbps(self) -> float:
        """Peak bandwidth the accelerator can draw, GB/s (10^9 bytes/s)."""
        return self.mem_bytes_per_cycle * self.clock_mhz / 1e3

    @property
    def clock_hz(self) -> float:
        return self.clock_mhz * 1e6

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "family": self.family, "part": self.part,
            "clock_mhz": self.clock_mhz, "bandwidth_gbps": round(self.bandwidth_gbps, 3),
            "mem_bytes_per_cycle": round(self.mem_bytes_per_cycle, 3),
            "memory": self.memory.__dict__, "accel": {**self.accel.__dict__, "macs_per_cycle": self.accel.macs_per_cycle},
            "resources": self.resources, "shell": self.shell,
        }


def names() -> list[str]:
    return sorted(p.stem for p in BOARD_DIR.glob("*.toml"))


def _need(d: dict, key: str, where: str):
    if key not in d:
        raise BoardError(f"board file {where}: missing '{key}'")
    return d[key]


def load(name_or_path: str) -> Board:
    """Load a board by name (``sim``, ``u280``, ...) or from a TOML path."""
    p = Path(name_or_path)
    if p.suffix != ".toml":
        p = BOARD_DIR / f"{name_or_path}.toml"
        if not p.is_file():
            raise BoardError(f"unknown board '{name_or_path}' (known: {', '.join(names())})")
    elif not p.is_file():
        raise BoardError(f"board file not found: {p}")
    try:
        d = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BoardError(f"board file {p}: {e}") from None
    where = str(p)
    m, a = _need(d, "memory", where), _need(d, "accel", where)
    try:
        mem = Memory(**m)
        acc = Accel(**{k: tuple(v) if isinstance(v, list) else v for k, v in a.items()})
    except TypeError as e:
        raise BoardError(f"board file {where}: {e}") from None
    b = Board(name=_need(d, "name", where), description=d.get("description", ""), family=_need(d, "family", where),
              part=d.get("part", ""), clock_mhz=float(_need(d, "clock_mhz", where)), memory=mem, accel=acc,
              resources=d.get("resources", {}), shell=d.get("shell", {}), platform=d.get("platform", ""),
              board_part=d.get("board_part", ""), path=p)
    _check(b, where)
    return b


def _check(b: Board, where: str) -> None:
    a = b.accel
    if b.clock_mhz <= 0 or b.memory.channels < 1 or b.memory.port_bytes < 1:
        raise BoardError(f"board file {where}: clock, channels and port width must be positive")
    if a.chains < 1 or a.chain_length < 1:
        raise BoardError(f"board file {where}: chains and chain_length must be positive")
    if a.sfu_lanes < 2 or a.sfu_lanes & (a.sfu_lanes - 1):
        raise BoardError(f"board file {where}: sfu_lanes must be a power of two >= 2 (the SFU's lanes)")
    if a.block_slots == 1 or a.block_slots < 0:
        raise BoardError(f"board file {where}: block_slots must be 0 (no cap) or >= 2 (a paired unit is 2 blocks)")
    if not 1 <= a.weight_channels <= b.memory.channels:
        raise BoardError(f"board file {where}: weight_channels must be 1 .. memory.channels ({b.memory.channels})")
    if a.weight_channels & (a.weight_channels - 1):
        raise BoardError(f"board file {where}: weight_channels must be a power of two (the engine divides by it)")
    words = b.memory.port_bytes // 4
    if a.abuf_banks and (a.abuf_banks < words or a.abuf_banks & (a.abuf_banks - 1)):
        # a beat's words (ST, LD) must fall in distinct banks, and a word's bank is its low address bits
        raise BoardError(f"board file {where}: abuf_banks must be a power of two >= the port's {words} words")
    banks = a.abuf_banks or words
    if a.weight_channels > 1 and 2 * a.weight_channels > banks:
        # every channel writes up to two output rows a cycle, each to its own ABUF bank
        raise BoardError(f"board file {where}: weight_channels {a.weight_channels} needs {2 * a.weight_channels} ABUF "
                         f"banks; the board has {banks} (set accel.abuf_banks)")
    if a.abuf_words % banks:
        raise BoardError(f"board file {where}: abuf_words must be a multiple of the {banks} ABUF banks")
    if not set(a.sparsity_n) <= {2, 4, 8, 16} or 16 not in a.sparsity_n:
        raise BoardError(f"board file {where}: sparsity_n must be a subset of 2,4,8,16 including 16 (dense)")
    if not set(a.weight_bits) <= {4, 8}:
        raise BoardError(f"board file {where}: weight_bits must be 4 and/or 8")
    if 1 not in a.prefill_buckets:
        raise BoardError(f"board file {where}: prefill_buckets must include 1 (the decode step)")
