"""Device memory map (byte addresses in HBM/DDR) and on-chip buffer layout (ABUF words, QBUF bytes).

The map is part of the compiled artifact: the runtime programs the region registers from it and the
simulators check every access against it.
"""
from __future__ import annotations

from dataclasses import dataclass

from flightllm.errors import CompileError
from flightllm.hw.regs import PERM_R, PERM_W, PERM_X, REGION_ALIGN

PAGE = REGION_ALIGN         # regions are page aligned, as the region registers require


@dataclass
class Region:
    name: str
    base: int
    size: int
    writable: bool
    executable: bool = False       # instructions are fetched from here (never together with writable)

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def perm(self) -> int:
        """The region register's permission bits (hw/regs.py): every region is readable."""
        return PERM_R | (PERM_W if self.writable else 0) | (PERM_X if self.executable else 0)

    def to_dict(self) -> dict:
        d = {"base": self.base, "size": self.size, "writable": self.writable}
        if self.executable:
            d["executable"] = True
        return d


class MemoryMap:
    def __init__(self):
        self.regions: dict[str, Region] = {}
        self.top = 0

    def add(self, name: str, size: int, writable: bool, executable: bool = False) -> Region:
        base = self.top
        size = max(size, 1)
        r = Region(name, base, -(-size // PAGE) * PAGE, writable, executable)
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
            m.regions[n] = Region(n, int(r["base"]), int(r["size"]), bool(r["writable"]), bool(r.get("executable")))
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
