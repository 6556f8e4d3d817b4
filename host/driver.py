"""The one device driver, written against pynq's API: ``pynq.MMIO`` for the control registers (hw/regs.py) and
``pynq.allocate`` for device memory. It drives a board, or (no board) sim/pynq_device.py's simulated device,
with the same code.

Start: write the region registers (from the artifact's memory map), INSTR_BASE, POS, MEM_SIZE, SPLIT_STRIDE, then
CTRL.START;
poll STATUS until DONE or ERROR. A watchdog reports the device's state when no instruction retires for too long;
device error codes become one-line DeviceErrors. An engine found busy (an interrupted run) or stopped by an
interrupt (Ctrl-C) is soft-reset through CTRL.RESET, so the next run starts clean.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from flightllm.errors import DeviceError, FlightLLMError
from flightllm.hw import regs
from flightllm.isa import ErrCode

POLL_CYCLES = 1 << 20           # simulated cycles advanced per poll of a simulated device
WATCHDOG_POLLS = 64             # polls with no instruction retired before the watchdog fires


class DeviceLock:
    """One process per device: a second opener gets a clear message instead of corrupting a run."""

    def __init__(self, tag: str):
        d = Path(os.environ.get("FLIGHTLLM_LOCK_DIR", tempfile.gettempdir()))
        self.path = d / f"flightllm-{tag.replace('/', '_')}.lock"
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            who = self.fh.read().strip() or "another process"
            self.fh.close()
            raise FlightLLMError(f"device {tag} is in use by {who} (lock {self.path})") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()}")
        self.fh.flush()

    def release(self):
        if not self.fh.closed:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


class Accelerator:
    def __init__(self, device, csr_base: int = 0):
        import pynq

        self.device = device
        self.lock = DeviceLock(device.tag)
        self.mmio = pynq.MMIO(csr_base, 0x100, device=device)
        self.buf = None
        self.mem_size = 0
        self.split_stride = 0
        self.regions: list[tuple[int, int, int]] = []
        if self.read("ID") != regs.ID_VALUE:
            self.lock.release()
            raise DeviceError(f"device {device.tag} is not a flightllm engine (ID {self.read('ID'):#x})")

    # -- registers ----------------------------------------------------------------------------------
    def read(self, name: str) -> int:
        return int(self.mmio.read(regs.offset(name)))

    def write(self, name: str, val: int) -> None:
        self.mmio.write(regs.offset(name), int(val) & 0xFFFFFFFF)

    # -- memory -------------------------------------------------------------------------------------
    def load(self, image: np.ndarray, mem_size: int, memmap=None, split_stride: int = 0) -> None:
        """Allocate device memory for the artifact and copy its image in; ``memmap`` (the artifact's
        compiler.memmap.MemoryMap) gives the protection regions programmed before every run (none: MEM_SIZE only),
        ``split_stride`` the SPLIT_STRIDE register (the artifact's: where split MV/MMs find channels 1..C-1)."""
        import pynq

        if split_stride < 0 or split_stride % regs.REGION_ALIGN or split_stride >> 48:
            raise DeviceError(f"SPLIT_STRIDE {split_stride:#x} must be a multiple of {regs.REGION_ALIGN} below 2^48")

        self.buf = pynq.allocate((mem_size,), np.uint8, target=self.device)
        if self.buf.device_address != 0:
            # the artifact's addresses are absolute; relocation needs a base register (docs/boards.md)
            raise DeviceError(f"device memory landed at {self.buf.device_address:#x}; flightllm artifacts need 0")
        self.buf[: image.size] = image
        self.buf.sync_to_device()
        self.mem_size = mem_size
        self.split_stride = int(split_stride)
        self.regions = [(r.base, r.size, r.perm) for r in memmap.regions.values()] if memmap is not None else []
        regs.region_writes(self.regions)            # refuse what the registers cannot hold before any run

    def write_mem(self, addr: int, data: np.ndarray) -> None:
        b = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        self.buf[addr: addr + b.size] = b
        self.buf[addr: addr + b.size].sync_to_device()

    def read_mem(self, addr: int, n: int) -> np.ndarray:
        v = self.buf[addr: addr + n]
        v.sync_from_device()
        return np.asarray(v).copy()

    # -- execution ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Soft reset (CTRL.RESET): the engine abandons whatever it runs and returns to idle."""
        self.write("CTRL", regs.CTRL_RESET)

    def run(self, prog_addr: int, pos: int):
        try:
            return self._run(prog_addr, pos)
        except KeyboardInterrupt:
            self.reset()            # leave the engine idle: the next run starts clean
            raise

    def _run(self, prog_addr: int, pos: int):
        from flightllm.sim.fsim import RunStats

        if self.read("STATUS") & regs.STATUS_BUSY:
            self.reset()            # a run was abandoned (a killed process): stop it before reprogramming
        for name, val in regs.region_writes(self.regions):
            self.write(name, val)
        self.write("INSTR_BASE_LO", prog_addr & 0xFFFFFFFF)
        self.write("INSTR_BASE_HI", prog_addr >> 32)
        self.write("MEM_SIZE_LO", self.mem_size & 0xFFFFFFFF)
        self.write("MEM_SIZE_HI", self.mem_size >> 32)
        self.write("POS", pos)
        self.write("SPLIT_STRIDE_LO", self.split_stride & 0xFFFFFFFF)
        self.write("SPLIT_STRIDE_HI", self.split_stride >> 32)
        self.write("CTRL", regs.CTRL_START)
        advance = getattr(self.device, "advance", None)
        idle, last = 0, -1
        while True:
            status = self.read("STATUS")
            if status & (regs.STATUS_DONE | regs.STATUS_ERROR):
                break
            ret = self.read("INSTRET")
            idle = idle + 1 if ret == last else 0
            last = ret
            if idle >= WATCHDOG_POLLS:
                e = DeviceError(f"watchdog: no instruction retired in {idle} polls (pc {self.read('PC')}, "
                                f"status {status:#x}, {self.read('CYCLES_LO')} cycles)", ErrCode.WATCHDOG,
                                self.read("PC"))
                self.reset()
                raise e
            if advance is not None:
                advance(POLL_CYCLES)
            else:
                time.sleep(1e-4)
        if status & regs.STATUS_ERROR:
            code, pc = self.read("ERROR"), self.read("PC")
            name = ErrCode(code).name if code in ErrCode._value2member_map_ else f"code {code}"
            raise DeviceError(f"device stopped: {name} at instruction word {pc}", code, pc)
        st = RunStats()
        st.cycles = self.read("CYCLES_LO") | (self.read("CYCLES_HI") << 32)
        st.instructions = self.read("INSTRET")
        st.bytes_read = self.read("RD_BYTES")
        st.bytes_written = self.read("WR_BYTES")
        st.by_class = {k: self.read(f"CYC_{k}") for k in ("LD", "ST", "MM", "SYS")}
        return st

    def close(self):
        self.lock.release()
