"""Weight channels on the RTL (hw/top.py with tests/boards/sim-2ch.toml: two masters, two engines in lockstep; and
tests/boards/narrow-4ch.toml: four on 16-byte ports, with more ABUF banks than a port has words): split MV/MM
bit-exact with fsim, cycles equal to the cycle model, a channel's range fault stopping the engine as on fsim, lint
clean, and the whole SmolLM2 model (docs/rtl.md "Weight channels")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flightllm import boards
from flightllm.errors import DeviceError
from flightllm.isa import ErrCode, Op, SysOp, assemble, make

pytestmark = pytest.mark.rtl

from rtl_available import HAVE, need  # noqa: E402,F401

SIM2 = str(Path(__file__).resolve().parents[1] / "boards" / "sim-2ch.toml")
# four channels on 16-byte ports: 8 output rows a cycle, so 8 ABUF banks for a 4-word beat (accel.abuf_banks)
NARROW4 = str(Path(__file__).resolve().parents[1] / "boards" / "narrow-4ch.toml")

CASES = [
    ("mv", 1536, 576, 4, 16, 0, 1),
    ("mv", 193, 576, 8, 16, 1, 1),                   # odd rows: channel 1's last pair is padding, not written
    ("mv", 192, 576, 4, 2, 2, 1),
    ("mv", 576, 1536, 8, 4, 3, 1),
    ("mv", 37, 96, 4, 8, 4, 1),                      # short rows: each channel's stream merges rows
    ("mv", 1, 32, 8, 16, 5, 1),                      # one row: channel 1 streams only padding
    ("mm", 192, 576, 4, 16, 6, 5),
    ("mm", 35, 96, 8, 2, 7, 3),
    ("mv", 1536, 576, 8, 2, 8, 1),
]


NARROW_CASES = [
    ("mv", 1536, 576, 4, 16, 0, 1),
    ("mv", 193, 576, 8, 16, 1, 1),                   # odd rows: the last channel's last pair is padding
    ("mv", 576, 1536, 8, 4, 3, 1),
    ("mv", 37, 96, 4, 8, 4, 1),                      # short rows: each channel's stream merges rows
    ("mv", 3, 32, 4, 16, 5, 1),                      # two channels stream only padding
    ("mm", 190, 576, 4, 16, 6, 5),
    ("mm", 35, 96, 8, 2, 7, 3),
]


@need
@pytest.mark.parametrize("board,op,rows,cols,wbits,sp,seed,tokens",
                         [(SIM2, *c) for c in CASES] + [(NARROW4, *c) for c in NARROW_CASES],
                         ids=lambda v: Path(v).stem if isinstance(v, str) and v.endswith(".toml") else None)
def test_split_kernel_bit_exact_and_cycles(board, op, rows, cols, wbits, sp, seed, tokens):
    """sim-2ch, and narrow-4ch, whose four engines write 8 output rows a cycle into 8 ABUF banks while ST reads a
    4-word beat from any 4 consecutive of them: bits, cycles and bytes as on fsim."""
    from flightllm.host.kernel import run

    r = run(op, "rtl", board, rows, cols, wbits, sp, seed, tokens)
    assert r["bit_exact"], r
    assert r["cycles"] == r["fsim_cycles"], r
    assert [r["bytes_read"], r["bytes_written"]] == r["fsim_bytes"], r
    if op == "mv" and rows * cols >= 1536 * 576 and sp == 16:
        # every channel memory-bound at the board's C ports' bytes a cycle. What is not split (the activations' LD,
        # the outputs' ST, latency and drain: ~280 cycles on sim-2ch) weighs C times as much against the split
        # stream: Q8_0 2:16 on sim-2ch (1,734 roofline cycles) measures 0.86
        assert r["efficiency"] >= 0.90, r


@need
def test_parity_fuzz_on_four_channels():
    """Random programs (LD/ST at any offset and stride, MISC, split and unsplit MV/MM) on narrow-4ch: the RTL
    with 8 banks for 4-word beats gives fsim's memory, status and cycles."""
    from flightllm import fuzz

    r = fuzz.run("parity", 300, seed=5, board=NARROW4)
    assert r.cases == 300 and r.clean and r.cycle_mismatches == 0, r.examples
    assert r.accepted > 50


@need
@pytest.mark.parametrize("over", [0, 1])
def test_channel_range_fault_stops_as_on_fsim(over):
    """A split MV whose channel-1 section runs past device memory (over = 1) stops with MEM_BOUNDS at its PC on
    both the RTL and fsim, before it writes anything; inside memory (over = 0) it runs."""
    from flightllm.sim.fsim import FunctionalSim
    from flightllm.sim.rtl_device import RtlDevice

    b = boards.load(SIM2)
    size, stride = 1 << 16, 4096
    # 8 rows of Q4_1 x 64: two row pairs (2 x 80 bytes) a channel; channel 1's section at waddr + 4096
    prog = [make(Op.MV, fmt=0, sp_n=16, rows=8, cols=64, waddr=size - stride - (100 if over else 200), wstride=40,
                 xaddr=0, xstride=64, yaddr=0, ystride=8, tokens=1, split=1),
            make(Op.SYS, fn=SysOp.END)]
    w = assemble(prog).view(np.uint8)
    out = []
    for dev in (RtlDevice(b, size, split_stride=stride), FunctionalSim(b, size, split_stride=stride)):
        dev.mem[4096: 4096 + w.size] = w
        try:
            dev.run(4096, 0)
            out.append(None)
        except DeviceError as e:
            out.append((e.code, e.pc))
    assert out[0] == out[1] == ((ErrCode.MEM_BOUNDS, 0) if over else None), out


@need
def test_verilator_lint_clean_two_channels(tmp_path):
    from flightllm.sim.rtl_device import lint

    for board in (SIM2, NARROW4):
        r = lint(boards.load(board), tmp_path / Path(board).stem)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "%Warning" not in r.stderr and "%Error" not in r.stderr, r.stderr[-2000:]


@pytest.mark.skipif(not HAVE, reason="Verilator not installed")
def test_smollm2_on_two_weight_channels_rtl(artifact_2ch, sim2_board):
    """SmolLM2 compiled for sim-2ch (every projection and the head split over both channels): a 4-token prefill
    and a decode step on the RTL give fsim's logits bit for bit, its cycles and its RD/WR bytes."""
    from flightllm.host.runtime import Runtime

    prompt = [504, 3575, 282, 4521]                  # "The capital of Germany"
    runs = {}
    for backend in ("fsim", "rtl"):
        rt = Runtime(artifact_2ch, backend, board=sim2_board)
        try:
            lg, st = rt.forward(prompt, 0)
            nxt = int(np.argmax(lg[-1] if lg.ndim == 2 else lg))
            lg2, st2 = rt.forward([nxt], len(prompt))
            runs[backend] = (nxt, lg, lg2, [(s.cycles, s.bytes_read, s.bytes_written) for s in (st, st2)])
        finally:
            rt.close()
    (fn, fl, fl2, fc), (rn, rl, rl2, rc) = runs["fsim"], runs["rtl"]
    assert rn == fn and np.array_equal(fl, rl) and np.array_equal(fl2, rl2)
    assert rc == fc, (rc, fc)


@pytest.fixture(scope="module")
def split_mv():
    """A split MV 1536 x 576 Q4_1 on the two-channel RTL: (device, image, clean run's memory and stats, kernel)."""
    from flightllm.host import kernel
    from flightllm.sim.rtl_device import RtlDevice

    if not HAVE:
        pytest.skip("Verilator not installed")
    b = boards.load(SIM2)
    k = kernel.build(b, "mv", 1536, 576, 4, 16, 3, 1)
    img = k["image"]
    dev = RtlDevice(b, img.size, k["memmap"], k["split_stride"])
    dev.mem[:] = img
    ref = dev.run(k["prog_addr"])
    return dev, img, dev.mem.copy(), ref, k


@pytest.mark.parametrize("seed,p,lat", [(1, 0.3, 0), (2, 0.0, 40), (3, 0.6, 9)])
def test_split_under_backpressure_on_every_master(split_mv, seed, p, lat):
    """ARREADY low, RVALID gaps and extra latency on both masters (drawn independently): the channels fall out of
    step and the lockstep join waits; the bits are those of a clean run, only the cycles grow."""
    dev, img, ref_mem, ref, k = split_mv
    dev.mem[:] = img
    dev.faults(seed=seed, ar=p, r=p, latency=lat)
    try:
        st = dev.run(k["prog_addr"])
        n0, n1 = dev.read_bursts()
    finally:
        dev.faults()
    assert np.array_equal(dev.mem, ref_mem)
    assert st.cycles > ref.cycles and st.bytes_read == ref.bytes_read
    assert n1 >= 7 and n0 > n1            # channel 1 streams its ~27 KiB section in 64-beat bursts


@pytest.mark.parametrize("port,k_,resp", [(1, 0, "SLVERR"), (1, 5, "DECERR"), (0, 6, "SLVERR")])
def test_error_response_on_a_weight_channel_stops_the_engine(split_mv, port, k_, resp):
    """An SLVERR/DECERR on a read burst of m1_axi (or m_axi) during a split MV: AXI_ERROR in one line, nothing
    written outside the output; after a soft reset the same device reruns the kernel identically."""
    dev, img, ref_mem, ref, k = split_mv
    dev.mem[:] = img
    dev.faults(seed=4, r=0.1, latency=2, err_read=k_, err_port=port, resp=resp)
    try:
        with pytest.raises(DeviceError) as e:
            dev.run(k["prog_addr"])
    finally:
        dev.faults()
    assert e.value.code == ErrCode.AXI_ERROR and "\n" not in str(e.value)
    out = k["memmap"]["out"]
    keep = np.ones(img.size, bool)
    keep[out.base: out.end] = False
    assert np.array_equal(dev.mem[keep], img[keep])
    dev.reset()
    dev.mem[:] = img
    st = dev.run(k["prog_addr"])
    assert np.array_equal(dev.mem, ref_mem) and st.cycles == ref.cycles


def test_faults_refuse_a_master_the_board_lacks(split_mv):
    from flightllm.errors import FlightLLMError

    dev = split_mv[0]
    with pytest.raises(FlightLLMError, match="err_port"):
        dev.faults(err_read=0, err_port=2)
