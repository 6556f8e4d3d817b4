"""Memory protection on the functional simulator: every fault stops the engine with its code, nothing lands
outside a writable region, and the device is reusable afterwards."""
import numpy as np
import pytest

from flightllm import boards, isa
from flightllm.compiler.memmap import MemoryMap
from flightllm.errors import DeviceError
from flightllm.isa import ErrCode, LdFmt, MiscOp, Op, StFmt, SysOp, WFmt
from flightllm.sim.fsim import FunctionalSim

END = isa.make(Op.SYS, fn=SysOp.END)


@pytest.fixture()
def dev():
    mm = MemoryMap()
    mm.add("weights", 8192, writable=False)
    mm.add("data", 8192, writable=True)
    mm.add("program", 4096, writable=False, executable=True)
    sim = FunctionalSim(boards.load("sim"), mm.top + 4096, mm)
    sim.mem[:] = 7
    return sim, mm


def _load(sim, mm, prog):
    w = isa.assemble(prog + [END])
    p = mm["program"]
    sim.write(p.base, w)


def _run(sim, mm, prog, pos=0):
    _load(sim, mm, prog)
    return sim.run(mm["program"].base, pos)


@pytest.mark.parametrize("ins,code", [
    (isa.make(Op.ST, fmt=StFmt.I32, src=0, addr=0, rows=1, cols=4, src_stride=4, dst_stride=16, elem_stride=4),
     ErrCode.MEM_WRITE_RO),                                          # into the weights
    (isa.make(Op.ST, fmt=StFmt.I32, src=0, addr=8192 + 8188, rows=1, cols=4, src_stride=4, dst_stride=16,
              elem_stride=4), ErrCode.MEM_BOUNDS),                   # straddles data -> program
    (isa.make(Op.ST, fmt=StFmt.I16, src=0, addr=8192 + 1, rows=1, cols=2, src_stride=2, dst_stride=4,
              elem_stride=2), ErrCode.MISALIGNED),
    (isa.make(Op.LD, fmt=LdFmt.I32, dst=0, addr=20480 + 4000, rows=1, cols=64, src_stride=256, dst_stride=64),
     ErrCode.MEM_BOUNDS),                                            # past the last region
    (isa.make(Op.MISC, fn=MiscOp.COPY, src=0, dst=262144 - 8, n=16, rows=1), ErrCode.BUF_OVERFLOW),
    (isa.make(Op.MV, fmt=WFmt.Q8_0, sp_n=16, waddr=0, wstride=34, rows=1000, cols=32, tokens=1), ErrCode.MEM_BOUNDS),
    (isa.make(Op.MV, fmt=WFmt.Q8_0, sp_n=16, waddr=0, wstride=34, rows=0, cols=32, tokens=1), ErrCode.ILLEGAL_INSTR),
])
def test_faults_stop_with_their_code(dev, ins, code):
    sim, mm = dev
    _load(sim, mm, [ins])
    before = sim.mem.copy()
    with pytest.raises(DeviceError) as e:
        sim.run(mm["program"].base, 0)
    assert e.value.code == code
    assert np.array_equal(sim.mem, before)                          # nothing was written
    _run(sim, mm, [])                                                # and the device runs the next program


def test_pos_relative_store_is_checked_at_run_time(dev):
    sim, mm = dev
    st = isa.make(Op.ST, fmt=StFmt.I32, src=0, addr=8192 + 8192 - 16, rows=1, cols=4, src_stride=4, dst_stride=16,
                  elem_stride=4, pos_stride=16)
    _run(sim, mm, [st], pos=0)
    with pytest.raises(DeviceError) as e:
        _run(sim, mm, [st], pos=1)
    assert e.value.code == ErrCode.MEM_WRITE_RO


def test_illegal_words(dev):
    sim, mm = dev
    p = mm["program"]
    for words in ([0], [0xF], [int(Op.MV)] + [0xFFFFFFFF] * 8):
        sim.write(p.base, np.array(words, "<u4"))
        with pytest.raises(DeviceError) as e:
            sim.run(p.base, 0)
        assert e.value.code == ErrCode.ILLEGAL_INSTR
