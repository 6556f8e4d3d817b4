"""Build flow: Verilog from the Amaranth top plus the vendor project that turns it into something a board loads.

``build(board, out)`` writes ``out/rtl/flightllm_top.v`` (hw/top.py's ``generate_verilog``), a wrapper with the
port names the vendor tools expect, and per family:

* ``alveo``  (U280): an RTL kernel for Vitis: ``kernel.xml``, ``package_kernel.tcl`` (-> ``flightllm.xo``) and a
  ``v++`` link config with HBM connectivity for every pseudo-channel (-> ``flightllm.xclbin``), see vitis.py;
* ``zynq`` / ``zynqmp`` (PYNQ-Z2, ZCU104, KV260): a Vivado block design (PS, AXI SmartConnects, the engine)
  producing ``flightllm.bit`` + ``flightllm.hwh`` for ``pynq.Overlay``, see vivado.py;
* ``versal`` (VHK158): a Vivado block design with CIPS and an AXI NoC into HBM, producing a ``.pdi`` + ``.xsa``.

Every port list comes from the generated Verilog (ports.py), every figure from the board file. Without the vendor
tools the build writes everything, prints the commands to run where they exist, and succeeds; ``run=True`` runs
them and fails with ToolMissing when they are absent.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from flightllm import cache
from flightllm.boards import Board
from flightllm.hw.flow.ports import FlowError, TopPorts, interfaces

TOP = "flightllm_top"
HW = Path(__file__).resolve().parent.parent


class ToolMissing(FlowError):
    pass


@dataclass
class Project:
    board: str
    out: Path
    files: list[str] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)   # run in `out`, in order
    tools: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)          # what the commands produce (relative to out)
    notes: list[str] = field(default_factory=list)
    connectivity: dict = field(default_factory=dict)

    def shell_commands(self) -> list[str]:
        import shlex
        return [f"cd {shlex.quote(str(self.out))} && " + " ".join(shlex.quote(c) for c in cmd) for cmd in self.commands]


# Python modules outside hw/ that the generated Verilog depends on (hw/*.py imports them): the ISA and formats,
# the SFU model (its ROM tables and constants) and the SFU width rule, and the board loader. Named as modules, not
# checkout paths, so that an installed package finds them too.
KEY_MODULES = ("flightllm.isa", "flightllm.formats", "flightllm.sim.sfu_model", "flightllm.sim.sfu_cycles",
               "flightllm.boards")


def design_key(board: Board) -> str:
    """Hash of everything the generated Verilog depends on: hw/*.py, the modules of KEY_MODULES, the Amaranth
    version, and the board (its file, or its fields when it has none or was changed in memory)."""
    import amaranth

    h = hashlib.sha256()
    for p in sorted(HW.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    for name in KEY_MODULES:
        h.update(name.encode())
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    h.update(getattr(amaranth, "__version__", "?").encode())
    h.update(repr(dataclasses.replace(board, path=None)).encode())   # every field, the chain cut's too
    return h.hexdigest()[:20]


def verilog_for(board: Board, target: str = "synth") -> Path:
    """The generated top for ``board``, cached under $FLIGHTLLM_CACHE/verilog/<board>-<target>-<key>/ (generation
    of the big boards takes minutes; a target whose cached twin differs only in the clock gate is derived from it,
    hw/top.py ``retarget``). ``target``: see hw/top.py's ``generate_verilog``."""
    from flightllm.hw.top import TARGETS, generate_verilog, retarget

    key = design_key(board)
    d = cache.root() / "verilog" / f"{board.name}-{target}-{key}"
    v = d / f"{TOP}.v"
    if v.is_file():
        cache.touch(d)
        return v
    tmp = d.with_name(d.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for twin in TARGETS:
            tv = cache.root() / "verilog" / f"{board.name}-{twin}-{key}" / f"{TOP}.v"
            text = retarget(tv.read_text(), twin, target) if twin != target and tv.is_file() else None
            if text is not None:
                tmp.mkdir(parents=True)
                (tmp / f"{TOP}.v").write_text(text)
                break
        else:
            generate_verilog(board, tmp / f"{TOP}.v", TOP, target)
    except AssertionError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FlowError(f"board '{board.name}': hw/top.py cannot generate this board's engine: {e}") from None
    except BaseException:                     # Ctrl-C in the minutes a big board takes: leave nothing
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not d.exists():
        tmp.rename(d)
        cache.prune(d, f"{board.name}-{target}-")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return v


# ---- wrapper ------------------------------------------------------------------------------------------------

def _decl(d: str, w: int, name: str) -> str:
    return f"    {d} wire {'[' + str(w - 1) + ':0] ' if w > 1 else ''}{name}"


def wrapper(tp: TopPorts, module: str, clk: str, rstn: str, master_names: list[str], control: str,
            irq: str | None, attrs: dict[str, list[str]] | None = None) -> str:
    """Verilog wrapper: renames the top's interfaces (``m_axi`` -> master_names[i], ``s_axil`` -> control), turns the
    active-high synchronous ``rst`` into an active-low ``rstn`` and exposes ``irq``."""
    attrs = attrs or {}
    lines, conns = [], [f"        .{tp.clock}({clk})", f"        .{tp.reset}(~{rstn})"]

    def add(name, d, w):
        lines.append("".join(f"    (* {a} *)\n" for a in attrs.get(name, [])) + _decl(d, w, name))

    add(clk, "input", 1)
    add(rstn, "input", 1)
    for mi, nn in zip(tp.masters, master_names):
        for sig, p in mi.signals.items():
            add(f"{nn}_{sig}", p.dir, p.width)
            conns.append(f"        .{p.name}({nn}_{sig})")
    for sig, p in tp.control.signals.items():
        add(f"{control}_{sig}", p.dir, p.width)
        conns.append(f"        .{p.name}({control}_{sig})")
    if tp.irq and irq:
        add(irq, "output", 1)
        conns.append(f"        .{tp.irq}({irq})")
    return ("// Generated by flightllm build (hw/flow): vendor-facing names for the Amaranth top.\n"
            "`default_nettype none\n"
            f"module {module} (\n" + ",\n".join(lines) + "\n);\n"
            f"    {tp.module} u_top (\n" + ",\n".join(conns) + "\n    );\nendmodule\n`default_nettype wire\n")


def master_channels(n_channels: int, n_masters: int) -> list[tuple[int, int]]:
    """Channel range (first, last) each master is bound to: all of them, for every master. The engine's masters
    share one address space: a split MV/MM reads channel c's section at waddr + c * SPLIT_STRIDE (docs/isa.md),
    wherever the compiler placed it, so every master must reach all of memory (through the HBM switch / NoC).
    Binding master c to its own pseudo-channels would need the sections placed on channel boundaries: not done."""
    if n_masters > n_channels:
        raise FlowError(f"the top has {n_masters} memory masters but the board has {n_channels} channels")
    return [(0, n_channels - 1)] * n_masters


# ---- entry points -------------------------------------------------------------------------------------------

def flow_for(board: Board):
    from flightllm.hw.flow import vitis, vivado

    if board.family == "alveo":
        return vitis
    if board.family in ("zynq", "zynqmp", "versal"):
        return vivado
    if board.family == "sim":
        return _SimFlow
    raise FlowError(f"board '{board.name}': unknown family '{board.family}' (alveo, zynq, zynqmp, versal, sim)")


class _SimFlow:
    """The simulation board: the Verilog (for Verilator, --backend rtl) and the manifest, no vendor project."""

    @staticmethod
    def write(board: Board, tp: TopPorts, prj: Project) -> None:
        prj.notes.append("simulation board: no vendor project; the RTL runs under Verilator with --backend rtl")


def write_project(board: Board, verilog: Path | None, out: Path, tp: TopPorts | None = None) -> Project:
    """Write the vendor project for ``board`` around the generated top (``verilog``) into ``out``. With
    ``verilog=None`` the ports come from ``tp`` (the Elaboratable's list) and no rtl/flightllm_top.v is copied:
    the project scripts are complete, the RTL file is what ``build`` adds."""
    flow = flow_for(board)
    out = Path(out)
    (out / "rtl").mkdir(parents=True, exist_ok=True)
    if verilog is not None:
        tp = interfaces(Path(verilog).read_text(), TOP)
        dst = out / "rtl" / f"{TOP}.v"
        if Path(verilog).resolve() != dst.resolve():
            shutil.copyfile(verilog, dst)
    elif tp is None:
        raise FlowError("write_project needs the generated Verilog or the top's ports")
    prj = Project(board.name, out, files=[f"rtl/{TOP}.v"] if verilog is not None else [])
    flow.write(board, tp, prj)
    manifest = {"board": board.name, "family": board.family, "part": board.part, "platform": board.platform,
                "board_part": board.board_part, "clock_mhz": board.clock_mhz, "top": TOP,
                "design_key": design_key(board),
                "masters": [{"name": m.prefix, "data_bits": m.data_width, "addr_bits": m.addr_width}
                            for m in tp.masters],
                "control": {"name": tp.control.prefix, "addr_bits": tp.control.addr_width},
                "connectivity": prj.connectivity, "files": prj.files, "tools": prj.tools,
                "commands": prj.commands, "outputs": prj.outputs, "notes": prj.notes}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    prj.files.append("manifest.json")
    return prj


def build(board: Board, out, run: bool = False) -> Project:
    """Generate the Verilog (cached) and the vendor project; with ``run`` also invoke the vendor tools (checked
    for before anything is generated)."""
    if run:
        tools = getattr(flow_for(board), "TOOLS", [])
        if not tools:
            raise FlowError(f"board '{board.name}' has no vendor tools to run")
        missing = [t for t in tools if shutil.which(t) is None]
        if missing:
            raise ToolMissing(f"--run needs {' and '.join(missing)} on PATH (source Vivado/Vitis settings64.sh); "
                              f"without --run the project is written and the commands printed")
    prj = write_project(board, verilog_for(board, "xilinx"), Path(out))
    if run:
        for cmd in prj.commands:
            r = subprocess.run(cmd, cwd=prj.out)
            if r.returncode != 0:
                raise FlowError(f"'{' '.join(cmd)}' failed with status {r.returncode} (log in {prj.out})")
    return prj
