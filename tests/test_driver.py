"""The PYNQ driver over the simulated device: pynq's own MMIO/allocate reach it, results equal the direct path."""
import numpy as np
import pynq
import pytest

from flightllm import isa
from flightllm.errors import DeviceError, FlightLLMError
from flightllm.host.driver import Accelerator
from flightllm.host.runtime import Runtime
from flightllm.hw import regs
from flightllm.isa import ErrCode, Op, SysOp
from flightllm.sim.pynq_device import SimulatedDevice


@pytest.fixture()
def fsim_device(artifact, sim_board, tmp_path, monkeypatch):
    monkeypatch.setenv("FLIGHTLLM_LOCK_DIR", str(tmp_path))
    return SimulatedDevice.configure(sim_board, "fsim", artifact.mem_size)


def test_pynq_sees_the_simulated_device(fsim_device):
    from pynq.pl_server.device import Device

    assert Device.active_device is fsim_device and fsim_device in Device.devices
    m = pynq.MMIO(0, 0x100)                                  # no device argument: pynq's default device
    assert m.read(regs.offset("ID")) == regs.ID_VALUE
    b = pynq.allocate((16,), np.uint32)                      # likewise
    assert b.device is fsim_device
    b[:] = np.arange(16)
    b.sync_to_device()
    assert np.array_equal(fsim_device.engine.mem[b.device_address: b.device_address + 64].view("<u4"),
                          np.arange(16))


def test_driver_results_equal_direct_fsim(artifact, fsim_device):
    acc = Accelerator(fsim_device)
    try:
        acc.load(artifact.image, artifact.mem_size)
        via = Runtime(artifact, device=acc)
        direct = Runtime(artifact)
        ids = [1, 9690, 198, 2683, 359, 253]
        a, sa = via.forward(ids, 0)
        b, sb = direct.forward(ids, 0)
        assert np.array_equal(a, b) and sa.cycles == sb.cycles
        a, _ = via.forward([42], len(ids))
        b, _ = direct.forward([42], len(ids))
        assert np.array_equal(a, b)
    finally:
        acc.close()


def test_device_error_is_reported_and_device_reusable(artifact, fsim_device):
    acc = Accelerator(fsim_device)
    try:
        acc.load(artifact.image, artifact.mem_size)
        bad = artifact.memmap["io"].base + 1024           # a writable spot for a bad stream: opcode 0
        acc.write_mem(bad, np.array([0, 0], "<u4"))
        with pytest.raises(DeviceError, match="ILLEGAL_INSTR") as e:
            acc.run(bad, 0)
        assert e.value.code == ErrCode.ILLEGAL_INSTR
        end = isa.assemble([isa.make(Op.SYS, fn=SysOp.END)])
        acc.write_mem(bad, end)
        assert acc.run(bad, 0).instructions == 1
    finally:
        acc.close()


def test_second_opener_gets_a_clear_message(fsim_device):
    a = Accelerator(fsim_device)
    try:
        with pytest.raises(FlightLLMError, match="in use by pid"):
            Accelerator(fsim_device)
    finally:
        a.close()
    Accelerator(fsim_device).close()                          # released: usable again


def test_driver_writes_split_stride(artifact_2ch, sim2_board, tmp_path, monkeypatch):
    """The driver writes the artifact's SPLIT_STRIDE before every run: the split matrices' channel 1 is found
    (results equal the direct path); a stride the register cannot hold is refused before any run."""
    monkeypatch.setenv("FLIGHTLLM_LOCK_DIR", str(tmp_path))
    acc = Accelerator(SimulatedDevice.configure(sim2_board, "fsim", artifact_2ch.mem_size))
    try:
        with pytest.raises(DeviceError, match="SPLIT_STRIDE 0x800 must be a multiple of 4096"):
            acc.load(artifact_2ch.image, artifact_2ch.mem_size, artifact_2ch.memmap, 2048)
        acc.load(artifact_2ch.image, artifact_2ch.mem_size, artifact_2ch.memmap, artifact_2ch.split_stride)
        via = Runtime(artifact_2ch, device=acc, board=sim2_board)
        direct = Runtime(artifact_2ch, board=sim2_board)
        a, sa = via.forward([1, 9690, 198], 0)
        b, sb = direct.forward([1, 9690, 198], 0)
        assert np.array_equal(a, b) and sa.cycles == sb.cycles and sa.bytes_read == sb.bytes_read
        assert acc.read("SPLIT_STRIDE_LO") | acc.read("SPLIT_STRIDE_HI") << 32 == artifact_2ch.split_stride
    finally:
        acc.close()
