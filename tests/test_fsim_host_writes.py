"""fsim caches what it decodes (programs from executable regions, weights from read-only ones); a host write into
device memory must drop the stale entries, as a board simply reads the new bytes."""
import numpy as np

from flightllm import boards, isa
from flightllm.host import kernel
from flightllm.sim.fsim import FunctionalSim

ROWS, COLS = 64, 96
END = isa.assemble([isa.make(isa.Op.SYS, fn=isa.SysOp.END)])


def _kernels():
    b = boards.load("sim")
    k1 = kernel.build(b, "mv", ROWS, COLS, 4, 16, 1, 1)
    k2 = kernel.build(b, "mv", ROWS, COLS, 4, 16, 2, 1)   # the same layout, other weights and activations
    assert k1["image"].size == k2["image"].size and k1["prog_addr"] == k2["prog_addr"]
    assert not np.array_equal(k1["ref"], k2["ref"])
    return b, k1, k2


def _y(mem, k):
    return np.asarray(mem[k["out"]: k["out"] + ROWS * 4]).view("<i4")


def test_a_rewritten_matrix_and_program_are_read_again():
    b, k1, k2 = _kernels()
    sim = FunctionalSim(b, k1["image"].size, k1["memmap"])
    sim.write(0, k1["image"])
    sim.run(k1["prog_addr"])
    assert np.array_equal(_y(sim.mem, k1), k1["ref"][0])
    sim.write(0, k2["image"])                             # new weights in the read-only region
    sim.run(k2["prog_addr"])
    assert np.array_equal(_y(sim.mem, k2), k2["ref"][0])
    sim.write(k2["out"], np.zeros(ROWS, "<i4"))
    sim.write(k2["prog_addr"], END)                       # new program in the executable region: END only
    sim.run(k2["prog_addr"])
    assert not _y(sim.mem, k2).any()


def test_the_pynq_driver_path_drops_stale_entries_on_sync_to_device():
    from flightllm.host.driver import Accelerator
    from flightllm.sim.pynq_device import SimulatedDevice

    b, k1, k2 = _kernels()
    acc = Accelerator(SimulatedDevice.configure(b, "fsim", k1["image"].size))
    try:
        acc.load(k1["image"], k1["image"].size, k1["memmap"])
        acc.run(k1["prog_addr"], 0)
        assert np.array_equal(acc.read_mem(k1["out"], ROWS * 4).view("<i4"), k1["ref"][0])
        acc.write_mem(0, k2["image"])
        acc.run(k2["prog_addr"], 0)
        assert np.array_equal(acc.read_mem(k2["out"], ROWS * 4).view("<i4"), k2["ref"][0])
        acc.write_mem(k2["out"], np.zeros(ROWS, "<i4"))
        acc.write_mem(k2["prog_addr"], END)
        acc.run(k2["prog_addr"], 0)
        assert not acc.read_mem(k2["out"], ROWS * 4).view("<i4").any()
    finally:
        acc.close()


def test_a_host_write_past_memory_is_refused():
    import pytest
    from flightllm.errors import DeviceError

    sim = FunctionalSim(boards.load("sim"), 4096)
    with pytest.raises(DeviceError, match="beyond device memory"):
        sim.write(4090, np.zeros(8, np.uint8))
