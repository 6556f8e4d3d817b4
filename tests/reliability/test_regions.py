"""Region registers (hw/regs.py) and the rules the functional simulator enforces with them: instruction fetch only
from an executable region, reads need R, writes W, misaligned accesses refused, the first fault stops the engine
with its code and PC. The same rules on the RTL: test_rtl_protection.py (its parity sweeps run fsim and the RTL side by side)."""
import numpy as np
import pytest

from flightllm import boards, isa
from flightllm.compiler.memmap import MemoryMap
from flightllm.errors import DeviceError
from flightllm.hw import regs
from flightllm.isa import ErrCode, LdFmt, Op, StFmt, SysOp
from flightllm.sim.fsim import FunctionalSim, prot_regions

END = isa.make(Op.SYS, fn=SysOp.END)
NOP = isa.make(Op.SYS, fn=SysOp.NOP)


def layout():
    mm = MemoryMap()
    mm.add("weights", 8192, writable=False)
    mm.add("data", 8192, writable=True)
    mm.add("program", 4096, writable=False, executable=True)
    return mm


@pytest.fixture()
def dev():
    mm = layout()
    sim = FunctionalSim(boards.load("sim"), mm.top + 4096, mm)
    sim.mem[:] = 7
    return sim, mm


def put(sim, addr, prog):
    w = isa.assemble(prog).view(np.uint8) if prog and isinstance(prog[0], isa.Instr) else \
        np.asarray(prog, "<u4").view(np.uint8)
    sim.write(addr, w)


def fault(sim, addr, pos=0):
    with pytest.raises(DeviceError) as e:
        sim.run(addr, pos)
    return e.value.code, e.value.pc


def test_region_registers_round_trip():
    mm = layout()
    w = dict(regs.region_writes([(r.base, r.size, r.perm) for r in mm.regions.values()]))
    assert len(w) == 4 * regs.REGIONS and all(regs.REGS[n][1] == "rw" for n in w)
    assert all(regs.REGION_BASE <= regs.offset(n) <= 0xFC for n in w)
    got = regs.regions_from(w.__getitem__)
    assert [(b, n, p) for _, b, n, p in got] == [(r.base, r.size, r.perm) for r in mm.regions.values()]
    assert [p for *_, p in got] == [regs.PERM_R, regs.PERM_R | regs.PERM_W, regs.PERM_R | regs.PERM_X]
    assert [(r.base, r.end, r.perm) for r in prot_regions(mm)] == [(r.base, r.end, r.perm) for r in mm.regions.values()]


@pytest.mark.parametrize("regions,msg", [
    ([(0, 4096, 7)], "both writable and executable"),
    ([(100, 4096, 1)], "multiples of 4096"),
    ([(0, 4000, 1)], "multiples of 4096"),
    ([(0, 0, 1)], "empty"),
    ([(4096 * i, 4096, 1) for i in range(regs.REGIONS + 1)], "region registers"),
])
def test_region_writes_refuse_what_the_registers_cannot_hold(regions, msg):
    with pytest.raises(DeviceError, match=msg):
        regs.region_writes(regions)


def test_registers_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "rtl.md").read_text()
    assert regs.markdown() in doc, "docs/rtl.md's register table is stale: paste hw/regs.py::markdown()"


def test_fetch_needs_an_executable_region(dev):
    sim, mm = dev
    for name in ("weights", "data"):                    # a stream placed in data or weights never runs
        put(sim, mm[name].base, [END])
        assert fault(sim, mm[name].base) == (ErrCode.MEM_PERM, 0)
    assert fault(sim, mm.top) == (ErrCode.MEM_BOUNDS, 0)  # the unmapped tail
    assert fault(sim, mm.top + 8192) == (ErrCode.MEM_BOUNDS, 0)  # past memory
    put(sim, mm["program"].base, [END])
    assert fault(sim, mm["program"].base + 2) == (ErrCode.MISALIGNED, 0)
    assert sim.run(mm["program"].base).instructions == 1


def test_stream_running_off_its_region(dev):
    sim, mm = dev
    p = mm["program"]
    n = p.size // 4                                     # NOPs to the region's end, no END
    put(sim, p.base, [int(w) for w in isa.encode(NOP)] * n)
    assert fault(sim, p.base) == (ErrCode.MEM_BOUNDS, n)  # the next fetch lies in no region
    # an instruction whose words cross the region's end is truncated: illegal
    ld = isa.encode(isa.make(Op.LD, fmt=LdFmt.I32, dst=0, addr=0, rows=1, cols=4))
    at = p.end - 4 * (len(ld) - 2)
    put(sim, at, ld[: len(ld) - 2])
    assert fault(sim, at) == (ErrCode.ILLEGAL_INSTR, 0)


def test_the_first_fault_wins_and_earlier_instructions_ran(dev):
    """The engine stops at the first faulting instruction; an illegal word after it is never reached, and what
    ran before it did land (as on the RTL, which fetches one instruction at a time)."""
    sim, mm = dev
    d = mm["data"].base
    st_ok = isa.make(Op.ST, fmt=StFmt.I32, src=0, addr=d, rows=1, cols=4, src_stride=4, dst_stride=16, elem_stride=4)
    st_ro = isa.make(Op.ST, fmt=StFmt.I32, src=0, addr=0, rows=1, cols=4, src_stride=4, dst_stride=16, elem_stride=4)
    sim.abuf[:4] = [1, 2, 3, 4]
    w = list(isa.assemble([st_ok, st_ro])) + [0xF]
    put(sim, mm["program"].base, w)
    code, pc = fault(sim, mm["program"].base)
    assert code == ErrCode.MEM_WRITE_RO and pc == len(isa.encode(st_ok))
    assert list(sim.mem[d: d + 16].view("<i4")) == [1, 2, 3, 4]
    assert (sim.mem[:8192] == 7).all()


@pytest.mark.parametrize("kw,code", [
    (dict(fmt=LdFmt.I32, addr=2, rows=1, cols=4), ErrCode.MISALIGNED),
    (dict(fmt=LdFmt.I32, addr=0, rows=2, cols=4, src_stride=18), ErrCode.MISALIGNED),
    (dict(fmt=LdFmt.Q8_0, addr=2, rows=1, cols=32, src_stride=34), None),        # Q8_0 rows are byte-packed
    (dict(fmt=LdFmt.I32, idx=1, idx_addr=8192 + 2, addr=0, rows=1, cols=4), ErrCode.MISALIGNED),
])
def test_load_alignment(dev, kw, code):
    sim, mm = dev
    put(sim, mm["program"].base, [isa.make(Op.LD, dst=0, dst_stride=64, **kw), END])
    if code is None:
        sim.run(mm["program"].base)
    else:
        assert fault(sim, mm["program"].base) == (code, 0)


def test_read_needs_r_and_fetch_needs_only_x(dev):
    """A memory map's regions are all readable; registers may hold a region without R (write-only, execute-only)."""
    from flightllm.sim.fsim import Prot

    sim, mm = dev
    p = mm["program"]
    sim.regions = [Prot("wo", 0, 8192, regs.PERM_W), Prot("xo", p.base, p.end, regs.PERM_X)]
    ld = lambda a: isa.make(Op.LD, fmt=LdFmt.I32, addr=a, rows=1, cols=4, dst=0, dst_stride=4)  # noqa: E731
    for a in (0, p.base):
        put(sim, p.base, [ld(a), END])
        assert fault(sim, p.base) == (ErrCode.MEM_PERM, 0)
    st = isa.make(Op.ST, fmt=StFmt.I32, src=0, addr=0, rows=1, cols=4, src_stride=4, dst_stride=16, elem_stride=4)
    put(sim, p.base, [st, END])
    assert sim.run(p.base).instructions == 2


def test_gathered_rows_each_inside_a_region(dev):
    """LD idx: each gathered row is checked when its index is read; the rows before a bad one are loaded."""
    sim, mm = dev
    d = mm["data"].base
    sim.mem[0:16] = np.arange(16, dtype=np.uint8)
    sim.mem[d: d + 12] = np.array([0, 1, 100000], "<u4").view(np.uint8)     # row 2 lies past memory
    sim.abuf[:12] = -1
    put(sim, mm["program"].base, [isa.make(Op.LD, fmt=LdFmt.I32, idx=1, idx_addr=d, addr=0, rows=3, cols=1,
                                           src_stride=4, dst=0, dst_stride=1), END])
    assert fault(sim, mm["program"].base) == (ErrCode.MEM_BOUNDS, 0)
    assert list(sim.abuf[:3]) == [0x03020100, 0x07060504, -1]


def test_scattered_i32_store_is_illegal(dev):
    sim, mm = dev
    st = isa.make(Op.ST, fmt=StFmt.I32, src=0, addr=mm["data"].base, rows=1, cols=2, src_stride=2, dst_stride=8,
                  elem_stride=8)
    put(sim, mm["program"].base, [st, END])
    assert fault(sim, mm["program"].base) == (ErrCode.ILLEGAL_INSTR, 0)


def test_softmax_scale_below_2_31():
    """sfu_model's exponent arithmetic overflows int64 from imm = 2^31: the decoder refuses it (the RTL's too)."""
    from flightllm.errors import ISAError
    from flightllm.isa import MiscOp

    isa.make(Op.MISC, fn=MiscOp.SOFTMAX, n=8, rows=1, imm=(1 << 31) - 1)
    with pytest.raises(ISAError, match="below 2\\^31"):
        isa.make(Op.MISC, fn=MiscOp.SOFTMAX, n=8, rows=1, imm=1 << 31)


def test_driver_programs_the_regions_from_the_artifact(artifact, sim_board, tmp_path, monkeypatch):
    """The driver writes the region registers from the memory map before a run; the pynq-backed simulator
    enforces what the registers hold: a stream planted in the (writable) io region is never executed."""
    from flightllm.host.driver import Accelerator
    from flightllm.host.runtime import Runtime
    from flightllm.sim.pynq_device import SimulatedDevice

    monkeypatch.setenv("FLIGHTLLM_LOCK_DIR", str(tmp_path))
    acc = Accelerator(SimulatedDevice.configure(sim_board, "fsim", artifact.mem_size))
    try:
        acc.load(artifact.image, artifact.mem_size, artifact.memmap)
        bad = artifact.memmap["io"].base + 1024
        acc.write_mem(bad, isa.assemble([END]))
        with pytest.raises(DeviceError, match="MEM_PERM") as e:
            acc.run(bad, 0)
        assert e.value.code == ErrCode.MEM_PERM and e.value.pc == 0
        got = regs.regions_from(acc.read)
        assert [(b, n, p) for _, b, n, p in got] == [(r.base, r.size, r.perm) for r in artifact.memmap.regions.values()]
        a, sa = Runtime(artifact, device=acc).forward([1, 2, 3], 0)
        b, sb = Runtime(artifact).forward([1, 2, 3], 0)
        assert np.array_equal(a, b) and sa.cycles == sb.cycles
    finally:
        acc.close()


def test_fuzz_found_crashes_are_clean_faults(dev):
    """flightllm fuzz parity, seed 0: an I16 MM with wfrac > 24 (the RTL decoder refused it, isa.validate did
    not: fsim crashed on a negative shift; fixed on main at the same time) and a ROPE with n_pos whose n + POS is not whole heads (fsim crashed
    reshaping). Both are ILLEGAL_INSTR now, on fsim and the RTL."""
    from flightllm.errors import ISAError
    from flightllm.isa import MiscOp, WFmt

    with pytest.raises(ISAError, match="wfrac"):
        isa.make(Op.MM, fmt=WFmt.I16, sp_n=16, wfrac=28, rows=1, cols=32, tokens=1)
    sim, mm = dev
    rope = isa.make(Op.MISC, fn=MiscOp.ROPE, n_pos=1, src=999, src2=1975, dst=4015, n=28, rows=3, src_stride=31,
                    src2_stride=29, dst_stride=30, imm=28)
    put(sim, mm["program"].base, [rope, END])
    assert fault(sim, mm["program"].base, pos=38) == (ErrCode.ILLEGAL_INSTR, 0)
    sim.run(mm["program"].base, pos=28)                     # 28 + 28: two whole heads
