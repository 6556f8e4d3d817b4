"""A simulated accelerator behind pynq's own Device interface: the seam between the runtime and no board.

`SimulatedDevice` subclasses ``pynq.pl_server.device.Device`` (with ``_probe_``/``_probe_priority_``), so
``pynq.MMIO`` reaches its registers (capability REGISTER_RW) and ``pynq.allocate`` its memory; the host driver
(host/driver.py) is the same code for a board and for this. Behind it sits an engine with the register map of
hw/regs.py: the Verilator model of the RTL (``rtl``) or the functional simulator (``fsim``).

Buffers are host arrays mirrored into device memory by ``sync_to_device``/``sync_from_device`` (flush and
invalidate), as on an Alveo card, so a driver that forgets a sync fails here too.
"""
from __future__ import annotations

import os

import numpy as np
from pynq.buffer import PynqBuffer
from pynq.pl_server.device import Device

from flightllm import boards
from flightllm.errors import DeviceError, FlightLLMError
from flightllm.hw import regs
from flightllm.isa import ErrCode

ALIGN = 4096


class FsimEngine:
    """The functional simulator dressed in the engine's register map (runs a program at START). The protection
    regions come from the region registers, as on the RTL: what the driver programs is what is enforced."""

    def __init__(self, board: boards.Board, mem_size: int):
        from flightllm.sim.fsim import FunctionalSim

        self.sim = FunctionalSim(board, mem_size)
        self.mem = self.sim.mem
        self.r = {n: 0 for n in regs.REGS}
        self.r["ID"] = regs.ID_VALUE

    def csr_write(self, name: str, val: int):
        if name == "CTRL":
            if val & regs.CTRL_RESET:
                self.r.update(STATUS=0, ERROR=0)
            elif val & regs.CTRL_START:
                self._start()
            return
        self.r[name] = val & 0xFFFFFFFF

    def csr_read(self, name: str) -> int:
        return self.r[name]

    def step(self, cycles: int) -> None:
        """The whole program ran at START; nothing is left to advance."""

    def _regions(self):
        from flightllm.sim.fsim import Prot

        prot = [Prot(f"region {i}", b, b + n, p) for i, b, n, p in regs.regions_from(self.r.__getitem__)]
        self.sim.set_regions(prot)

    def _start(self):
        base = self.r["INSTR_BASE_LO"] | (self.r["INSTR_BASE_HI"] << 32)
        for k in ("STATUS", "ERROR", "PC", "CYCLES_LO", "CYCLES_HI", "INSTRET", "RD_BYTES", "WR_BYTES",
                  "CYC_LD", "CYC_ST", "CYC_MM", "CYC_SYS"):
            self.r[k] = 0
        self._regions()
        try:
            self.sim.split_stride = self.r["SPLIT_STRIDE_LO"] | (self.r["SPLIT_STRIDE_HI"] << 32)
            st = self.sim.run(base, self.r["POS"])
        except DeviceError as e:
            self.r.update(STATUS=regs.STATUS_ERROR, ERROR=int(e.code), PC=max(e.pc, 0))
            return
        self.r.update(STATUS=regs.STATUS_DONE, CYCLES_LO=st.cycles & 0xFFFFFFFF, CYCLES_HI=st.cycles >> 32,
                      INSTRET=st.instructions, RD_BYTES=st.bytes_read & 0xFFFFFFFF,
                      WR_BYTES=st.bytes_written & 0xFFFFFFFF)
        for k in ("LD", "ST", "MM", "SYS"):
            self.r[f"CYC_{k}"] = st.by_class.get(k, 0) & 0xFFFFFFFF
        self.r["CYC_MM"] = (st.by_class.get("MM", 0) + st.by_class.get("SFU", 0)) & 0xFFFFFFFF


class RtlEngine:
    """The Verilator model of hw/top.py: registers over its AXI4-Lite port, time advanced in cycle chunks."""

    def __init__(self, board: boards.Board, mem_size: int):
        from flightllm.sim.rtl_device import RtlDevice

        self.dev = RtlDevice(board, mem_size)
        self.mem = self.dev.mem

    def csr_write(self, name: str, val: int):
        if name == "CTRL":
            self.dev._lib.fl_drain(self.dev._h)      # the simulated interconnect forgets outstanding bursts
        self.dev.csr_write(name, val)

    def csr_read(self, name: str) -> int:
        return self.dev.csr_read(name)

    def step(self, cycles: int) -> None:
        self.dev._lib.fl_run(self.dev._h, cycles)

    def faults(self, **kw) -> None:
        self.dev.faults(**kw)


ENGINES = {"fsim": FsimEngine, "rtl": RtlEngine}


class SimulatedDevice(Device):
    """A flightllm engine with no board: found by pynq's device probing once configured."""

    _probe_priority_ = 900          # after every real device class pynq knows
    _configured: list["SimulatedDevice"] = []

    @classmethod
    def _probe_(cls):
        return list(cls._configured)

    @classmethod
    def configure(cls, board: boards.Board, engine: str, mem_size: int) -> "SimulatedDevice":
        """Create the simulated device and make it pynq's active device (what pynq.allocate/MMIO default to)."""
        dev = cls(board, engine, mem_size)
        cls._configured = [dev]
        Device._devices = [d for d in getattr(Device, "_devices", []) if not isinstance(d, cls)] + [dev]
        Device.active_device = dev
        return dev

    def __init__(self, board: boards.Board, engine: str, mem_size: int):
        # a simulated device lives inside its process: the pid in the tag keeps two processes' devices apart
        super().__init__(f"flightllm-sim-{engine}-{board.name}-{os.getpid()}")
        if engine not in ENGINES:
            raise FlightLLMError(f"unknown simulated engine '{engine}' (choose from {', '.join(ENGINES)})")
        self.board, self.name = board, f"flightllm {engine} model of {board.name}"
        self.engine = ENGINES[engine](board, mem_size)
        self.capabilities = {"REGISTER_RW": True, "CALLABLE": False, "MEMORY_MAPPED": False}
        self._top = 0

    # -- registers (pynq.MMIO with REGISTER_RW) -----------------------------------------------------
    def _reg(self, addr: int) -> str:
        for n, (off, _, _) in regs.REGS.items():
            if off == addr:
                return n
        raise DeviceError(f"no register at offset {addr:#x}", ErrCode.ILLEGAL_INSTR)

    def read_registers(self, address: int, length: int) -> bytes:
        out = bytearray()
        for a in range(address, address + length, 4):
            out += int(self.engine.csr_read(self._reg(a))).to_bytes(4, "little")
        return bytes(out[:length])

    def write_registers(self, address: int, data: bytes) -> None:
        for i in range(0, len(data), 4):
            self.engine.csr_write(self._reg(address + i), int.from_bytes(data[i:i + 4], "little"))

    def advance(self, cycles: int) -> None:
        """Simulated time passes while the driver polls (a board's clock runs on its own)."""
        self.engine.step(cycles)

    # -- memory (pynq.allocate) ---------------------------------------------------------------------
    def allocate(self, shape, dtype, **kwargs):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        base = self._top
        if base + n > self.engine.mem.size:
            raise DeviceError(f"device memory exhausted: {n} bytes requested, {self.engine.mem.size - base} free",
                              ErrCode.MEM_BOUNDS)
        self._top = -(-(base + n) // ALIGN) * ALIGN
        buf = PynqBuffer(shape, dtype, device=self, device_address=base, bo=base, coherent=False)
        buf[...] = 0
        return buf

    def flush(self, bo, offset, ptr, size):
        host = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint8 * size).from_address(ptr))
        self.engine.mem[bo + offset: bo + offset + size] = host
        if hasattr(self.engine, "sim"):              # fsim caches decoded programs and weights: drop the stale ones
            self.engine.sim.host_wrote(bo + offset, bo + offset + size)

    def invalidate(self, bo, offset, ptr, size):
        host = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint8 * size).from_address(ptr))
        host[:] = self.engine.mem[bo + offset: bo + offset + size]

    def faults(self, **kw) -> None:
        """Fault injection on the simulated AXI memory (the RTL engine only): see RtlDevice.faults."""
        if not hasattr(self.engine, "faults"):
            raise FlightLLMError("fault injection needs the rtl engine")
        self.engine.faults(**kw)
