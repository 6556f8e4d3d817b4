"""Value helpers shared by the cocotb testbenches in tests/hw/ (cocotb 2 handles)."""
from __future__ import annotations


def u(h) -> int:
    """Unsigned value of a handle (1-bit handles give Logic, wider ones LogicArray)."""
    v = h.value
    return v.to_unsigned() if hasattr(v, "to_unsigned") else int(v)


def s(h) -> int:
    """Signed value of a handle."""
    v = h.value
    return v.to_signed() if hasattr(v, "to_signed") else int(v)


def pack(vals, bits: int) -> int:
    """Concatenate ``vals`` (element 0 in the low bits), each truncated to ``bits``."""
    mask = (1 << bits) - 1
    out = 0
    for i, v in enumerate(vals):
        out |= (int(v) & mask) << (bits * i)
    return out
