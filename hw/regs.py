"""AXI4-Lite control/status register map of the engine, defined once.

The RTL (hw/csr.py), the Verilator harness wrapper (sim/rtl_device.py) and the docs (docs/rtl.md) read this
table. Offsets are byte addresses on the 32-bit AXI4-Lite slave.
"""
from __future__ import annotations

# name: (offset, access, description)
REGS: dict[str, tuple[int, str, str]] = {
    "CTRL":        (0x00, "w",  "bit0 START: begin fetching at INSTR_BASE (clears STATUS/ERROR/counters)"),
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
    # 0x80..0xFF reserved for the region registers (base/size/writable per region), a later issue
}
ID_VALUE = 0x464C4C31
ADDR_BITS = 8

STATUS_BUSY, STATUS_DONE, STATUS_ERROR = 1, 2, 4


def offset(name: str) -> int:
    return REGS[name][0]
