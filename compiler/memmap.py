"""Device memory map (byte addresses in HBM/DDR) and on-chip buffer layout (ABUF words, QBUF bytes).

The map is part of the compiled artifact: the runtime programs the region registers from it and the
simulators check every access against it.
"""
from __future__ import annotations

from dataclasses import dataclass

from flightllm.errors import CompileError

PAGE = 4096


@dataclass
class Region:
    name: str
    base: int
    size: int
    writable: bool

    @property
    def end(self) -> int:
        return self.base + self.size

    def to_dict(self) -> dict:
        return {"base": self.base, "size": self.size, "writable": self.writable}


class MemoryMap:
    def __init__(self):
        self.regions: dict[str, Region] = {}
        self.top = 0

    def add(self, name: str, size: int, writable: bool) -> Region:
        base = self.top
        size = max(size, 1)
        r = Region(name, base, -(-size // PAGE) * PAGE, writable)
        self.regions[name] = r
        self.top = r.end
        return r

    def __getitem__(self, name: str) -> Region:
        return self.regions[name]

    def to_dict(self) -> dict:
        return {n: r.to_dict() for n, r in self.regions.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "MemoryMap":
        m = cls()
        for n, r in d.items():
            m.regions[n] = Region(n, int(r["base"]), int(r["size"]), bool(r["writable"]))
            m.top = max(m.top, m.regions[n].end)
        return m


class Scratch:
    """Bump allocator for an on-chip buffer; ``align`` keeps QBUF blocks on 32-element boundaries."""

    def __init__(self, name: str, capacity: int, align: int = 32):
        self.name, self.capacity, self.align, self.top = name, capacity, align, 0
        self.slots: dict[str, tuple[int, int]] = {}

    def alloc(self, name: str, size: int) -> int:
        base = -(-self.top // self.align) * self.align
        if base + size > self.capacity:
            raise CompileError(f"{self.name} too small: '{name}' needs {size} more at {base} of {self.capacity}; "
                               f"lower the context (--ctx) or use a board with a larger {self.name}")
        self.slots[name] = (base, size)
        self.top = base + size
        return base

    def free_space(self) -> int:
        return self.capacity - -(-self.top // self.align) * self.align
