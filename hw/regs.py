"""AXI4-Lite control/status register map of the engine, defined once.

The RTL (hw/csr.py), the Verilator harness wrapper (sim/rtl_device.py) and the docs (docs/rtl.md) read this
table. Offsets are byte addresses on the 32-bit AXI4-Lite slave.
"""
from __future__ import annotations

# name: (offset, access, description)
REGS: dict[str, tuple[int, str, str]] = {
    "CTRL":        (0x00, "w",  "bit0 START: begin fetching at INSTR_BASE (clears STATUS/ERROR/counters); bit1 RESET: "
                                "abort whatever runs and return to idle (the registers keep their values)"),
    "STATUS":      (0x04, "r",  "bit0 BUSY, bit1 DONE (SYS END reached), bit2 ERROR (stopped on a fault)"),
    "ERROR":       (0x08, "r",  "error code (flightllm.isa.ErrCode) of the fault that stopped the engine"),
    "PC":          (0x0C, "r",  "word index (from INSTR_BASE) of the current / faulting instruction"),
    "INSTR_BASE_LO": (0x10, "rw", "byte address of the instruction stream, bits 31:0"),
    "INSTR_BASE_HI": (0x14, "rw", "bits 63:32"),
    "POS":         (0x18, "rw", "position of the first token of the run (fields flagged *_pos add it)"),
    "MEM_SIZE_LO": (0x1C, "rw", "device memory size in bytes (accesses at or past it fault MEM_BOUNDS)"),
    "MEM_SIZE_HI": (0x20, "rw", "bits 63:32"),
    "CYCLES_LO":   (0x24, "r",  "cycles since START while busy, bits 31:0"),
    "CYCLES_HI":   (0x28, "r",  "bits 63:32"),
    "INSTRET":     (0x2C, "r",  "instructions retired"),
    "CYC_LD":      (0x30, "r",  "cycles spent on LD instructions (fetch included)"),
    "CYC_ST":      (0x34, "r",  "cycles spent on ST"),
    "CYC_MM":      (0x38, "r",  "cycles spent on MM/MV"),
    "CYC_SYS":     (0x3C, "r",  "cycles spent on SYS"),
    "RD_BYTES":    (0x40, "r",  "payload bytes read by LD/MM/MV (bits 31:0)"),
    "WR_BYTES":    (0x44, "r",  "payload bytes written by ST (bits 31:0)"),
    "ID":          (0x48, "r",  "0x464C4C31 ('FLL1')"),
    "CYC_SFU":     (0x4C, "r",  "cycles spent on MISC (SFU) instructions"),
    "SPLIT_STRIDE_LO": (0x50, "rw", "bytes between the weight channels' sections: an MV/MM with split reads channel c "
                                    "at waddr + c * SPLIT_STRIDE (bits 31:0; a multiple of 4096)"),
    "SPLIT_STRIDE_HI": (0x54, "rw", "bits 47:32"),
}

# Memory-protection regions (0x80..0xFF): REGIONS x 4 registers. Every DMA access and instruction fetch must lie
# inside one enabled region with the permission it needs; with no region enabled only MEM_SIZE is enforced.
# Base and size are byte addresses (48 bits) and must be multiples of REGION_ALIGN.
REGIONS = 8
REGION_BASE = 0x80
REGION_ALIGN = 4096        # a page: every burst of an in-region access stays inside it, whatever the port width
PERM_R, PERM_W, PERM_X = 1, 2, 4      # read; write; instruction fetch (never from a W region)
PERM_SHIFT = 16                       # R{i}_ATTR: bits 15:0 size bits 47:32, bits 18:16 R/W/X
REGION_FIELDS = ("BASE_LO", "BASE_HI", "SIZE_LO", "ATTR")
for _i in range(REGIONS):
    for _k, _n in enumerate(REGION_FIELDS):
        REGS[f"R{_i}_{_n}"] = (REGION_BASE + 16 * _i + 4 * _k, "rw", {
            "BASE_LO": f"region {_i}: base bits 31:0",
            "BASE_HI": f"region {_i}: base bits 47:32 (15:0)",
            "SIZE_LO": f"region {_i}: size bits 31:0 (size 0 with no permission: disabled)",
            "ATTR": f"region {_i}: bits 15:0 size bits 47:32; bit 16 R, bit 17 W, bit 18 X"}[_n])
del _i, _k, _n
ID_VALUE = 0x464C4C31
ADDR_BITS = 9            # 0x000..0x0FF the registers above; 0x100..0x1FF a Vitis kernel's pointer arguments

STATUS_BUSY, STATUS_DONE, STATUS_ERROR = 1, 2, 4
CTRL_START, CTRL_RESET = 1, 2


def region_writes(regions) -> list[tuple[str, int]]:
    """The register writes that program the protection regions, the same for a board and the simulators.

    ``regions``: (base, size, perm) in priority order (a compiler MemoryMap's order); the other regions are
    disabled. What the registers cannot hold, or what would weaken the protection, is refused (a DeviceError)."""
    from flightllm.errors import DeviceError

    regions = list(regions)
    if len(regions) > REGIONS:
        raise DeviceError(f"{len(regions)} memory regions; the engine has {REGIONS} region registers")
    out = []
    for i in range(REGIONS):
        base, size, perm = regions[i] if i < len(regions) else (0, 0, 0)
        if base % REGION_ALIGN or size % REGION_ALIGN or base >> 48 or (base + size) >> 48 or perm >> 3:
            raise DeviceError(f"region {i} [{base:#x}, +{size:#x}) perm {perm}: base and size must be multiples of "
                              f"{REGION_ALIGN} below 2^48, perm R/W/X bits")
        if perm & PERM_X and perm & PERM_W:
            raise DeviceError(f"region {i} at {base:#x} is both writable and executable")
        if perm and not size:
            raise DeviceError(f"region {i} at {base:#x} is empty")
        vals = [base & 0xFFFFFFFF, (base >> 32) & 0xFFFF, size & 0xFFFFFFFF,
                ((size >> 32) & 0xFFFF) | (perm << PERM_SHIFT)]
        out += [(f"R{i}_{n}", v) for n, v in zip(REGION_FIELDS, vals)]
    return out


def regions_from(read) -> list[tuple[int, int, int, int]]:
    """(index, base, size, perm) of every enabled region, in priority order; ``read(name)`` reads a register."""
    out = []
    for i in range(REGIONS):
        lo, hi, slo, attr = (read(f"R{i}_{n}") for n in REGION_FIELDS)
        perm = (attr >> PERM_SHIFT) & 7
        if perm:
            out.append((i, lo | (hi & 0xFFFF) << 32, slo | (attr & 0xFFFF) << 32, perm))
    return out


def markdown() -> str:
    """The register table of docs/rtl.md (a test keeps the doc in step)."""
    out = ["| offset | name | access | description |", "|---|---|---|---|"]
    for n, (off, acc, desc) in sorted(REGS.items(), key=lambda kv: kv[1][0]):
        out.append(f"| 0x{off:02X} | `{n}` | {acc} | {desc} |")
    return "\n".join(out)


def offset(name: str) -> int:
    return REGS[name][0]
