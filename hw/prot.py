"""Memory protection: an access range checked against MEM_SIZE and the region registers of hw/regs.py.

``RegionCheck`` is combinational: ``[lo, hi)`` with the permission ``need`` (READ, WRITE, FETCH) gives ``code``
(0, or the isa.ErrCode that stops the engine) and ``end``, the end of the region that holds ``lo`` (MEM_SIZE when
no region is enabled), which instruction fetch uses. Rules, identical to sim/fsim.py's ``_region``:

1. ``hi`` past MEM_SIZE -> MEM_BOUNDS;
2. no region enabled (every permission field 0) -> allowed (bring-up: MEM_SIZE only);
3. the first enabled region (lowest index) with ``base <= lo`` and ``hi <= base + size`` decides: a write needs W
   (else MEM_WRITE_RO), a read R (else MEM_PERM), a fetch X without W (else MEM_PERM);
4. no such region -> MEM_BOUNDS.
"""
from __future__ import annotations

from amaranth import Cat, Elaboratable, Module, Mux, Signal

from flightllm.hw.regs import PERM_R, PERM_SHIFT, PERM_W, PERM_X, REGIONS
from flightllm.isa import ErrCode

READ, WRITE, FETCH = 0, 1, 2
RANGE_BITS = 82          # wide enough for every computed address range (40-bit address + 64-bit products)


def region_regs(rw: dict) -> list[tuple]:
    """(base, size, perm) expressions of every region from the CSR block's read/write registers."""
    out = []
    for i in range(REGIONS):
        attr = rw[f"R{i}_ATTR"]
        out.append((Cat(rw[f"R{i}_BASE_LO"], rw[f"R{i}_BASE_HI"][:16]), Cat(rw[f"R{i}_SIZE_LO"], attr[:16]),
                    attr[PERM_SHIFT: PERM_SHIFT + 3]))
    return out


class RegionCheck(Elaboratable):
    def __init__(self, regions: list[tuple], memsize):
        self.regions = regions
        self.memsize = memsize
        self.lo = Signal(RANGE_BITS)
        self.hi = Signal(RANGE_BITS)
        self.need = Signal(2)
        self.code = Signal(4)
        self.end = Signal(50)

    def elaborate(self, platform):
        m = Module()
        any_en = Signal()
        m.d.comb += any_en.eq(Cat(*[p != 0 for _, _, p in self.regions]).any())
        # priority: the lowest-index enabled region that holds the whole range; end: the one that holds lo
        hit, perm = Signal(), Signal(3)
        lo_end = Signal(50)
        m.d.comb += [hit.eq(0), perm.eq(0), lo_end.eq(self.memsize)]
        # the 82-bit range compared in 64-bit pieces (the same results): a region's base has 48 bits and its end
        # 49, so lo / hi past them decide by their high bits alone. Verilator evaluates a compare wider than 64 bits
        # word by word, and these run every cycle (three instances)
        lo_hi48, lo_hi49, hi_hi49 = Signal(), Signal(), Signal()
        m.d.comb += [lo_hi48.eq(self.lo[48:] != 0), lo_hi49.eq(self.lo[49:] != 0), hi_hi49.eq(self.hi[49:] != 0)]
        lo48, lo49, hi49 = self.lo[:48], self.lo[:49], self.hi[:49]
        for base, size, p in reversed(self.regions):
            en = p != 0
            end = Signal(49)
            m.d.comb += end.eq(base + size)
            above = lo_hi48 | (base <= lo48)                  # base <= lo
            inside = Signal()
            m.d.comb += inside.eq(en & above & ~hi_hi49 & (hi49 <= end))
            with m.If(inside):
                m.d.comb += [hit.eq(1), perm.eq(p)]
            with m.If(en & above & ~lo_hi49 & (lo49 < end)):
                m.d.comb += lo_end.eq(end)
        ok = Mux(self.need == WRITE, perm & PERM_W != 0,
                 Mux(self.need == FETCH, (perm & (PERM_X | PERM_W)) == PERM_X, perm & PERM_R != 0))
        denied = Mux(self.need == WRITE, int(ErrCode.MEM_WRITE_RO), int(ErrCode.MEM_PERM))
        with m.If((self.hi[64:] != 0) | (self.hi[:64] > self.memsize)):
            m.d.comb += self.code.eq(ErrCode.MEM_BOUNDS)
        with m.Elif(~any_en):
            m.d.comb += self.code.eq(0)
        with m.Elif(~hit):
            m.d.comb += self.code.eq(ErrCode.MEM_BOUNDS)
        with m.Elif(~ok):
            m.d.comb += self.code.eq(denied)
        with m.Else():
            m.d.comb += self.code.eq(0)
        m.d.comb += self.end.eq(Mux(any_en, lo_end, self.memsize))
        return m
