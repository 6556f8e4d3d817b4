from pathlib import Path

import pytest

from flightllm import boards


def test_every_board_loads_and_derives():
    names = boards.names()
    assert {"sim", "u280", "vhk158", "zcu104", "kv260", "pynq-z2"} <= set(names)
    for n in names:
        b = boards.load(n)
        assert b.mem_bytes_per_cycle > 0 and b.accel.macs_per_cycle > 0
        assert 1 in b.accel.prefill_buckets


def test_u280_figures_come_from_its_file():
    b = boards.load("u280")
    assert b.memory.channels == 32
    assert b.clock_mhz == 225.0
    assert b.bandwidth_gbps == pytest.approx(460.0, rel=1e-3)
    assert b.resources["dsp"] == 9024
    assert b.accel.dsps <= b.resources["dsp"]


def test_sim_board_is_one_64_byte_port():
    b = boards.load("sim")
    assert b.memory.channels == 1 and b.mem_bytes_per_cycle == 64


def test_beat_period():
    """Cycles per port-wide beat the memory delivers (the RTL harness's rate, the cycle model's beat model)."""
    import dataclasses

    # a memory channel's rate against its master's port; U280: a pseudo-channel's 14.375 GB/s at 225 MHz is
    # 63.9 bytes a cycle, just under the 64-byte port: no whole beat period (byte-rate model, no RTL harness)
    assert [boards.load(n).beat_period for n in ("sim", "kv260", "zcu104", "pynq-z2", "u280", "vhk158")] == [
        1, 1, 1, 2, None, 1]
    b = boards.load("pynq-z2")
    odd = dataclasses.replace(b, memory=dataclasses.replace(b.memory, channel_gbps=0.6), path=None)   # 6 B/cycle
    assert odd.beat_period is None
    from flightllm.sim.rtl_device import RtlDevice, RtlError

    with pytest.raises(RtlError, match="not a whole number"):
        RtlDevice(odd, 1 << 12)


def test_unknown_board_is_a_clear_error():
    with pytest.raises(boards.BoardError, match="unknown board 'nope'"):
        boards.load("nope")


def test_bad_board_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('name = "bad"\nfamily = "x"\nclock_mhz = 100\n[memory]\nkind="x"\n')
    with pytest.raises(boards.BoardError, match="missing 'accel'"):
        boards.load(str(p))
    p.write_text("not toml [")
    with pytest.raises(boards.BoardError):
        boards.load(str(p))


def test_block_slots_cap(tmp_path):
    import dataclasses

    from flightllm.hw import params as P

    b = boards.load("u280")
    assert b.accel.block_slots == 0 and P.max_lanes(b) == 8          # no cap: what the 64-byte port brings
    k = dataclasses.replace(b, accel=dataclasses.replace(b.accel, block_slots=4))
    assert P.max_lanes(k) == 4
    assert all(P.lanes(k, f, n) == min(P.lanes(b, f, n), 4) for f, n in P.MODES)
    for n in ("kv260", "zcu104", "pynq-z2"):                          # their 16-byte port on one HP port
        assert P.max_lanes(boards.load(n)) == 2
    t = (boards.BOARD_DIR / "sim.toml").read_text().replace("sfu_lanes = 16", "sfu_lanes = 16\nblock_slots = 1")
    (tmp_path / "bad.toml").write_text(t)
    with pytest.raises(boards.BoardError, match="block_slots"):
        boards.load(str(tmp_path / "bad.toml"))


@pytest.mark.parametrize("lanes", [1, 12])
def test_sfu_lanes_must_be_a_power_of_two(tmp_path, lanes):
    t = (boards.BOARD_DIR / "sim.toml").read_text().replace("sfu_lanes = 16", f"sfu_lanes = {lanes}")
    (tmp_path / "bad.toml").write_text(t)
    with pytest.raises(boards.BoardError, match="sfu_lanes must be a power of two"):
        boards.load(str(tmp_path / "bad.toml"))


def test_fetch_beats():
    from flightllm.hw import params as P

    from flightllm.hw.decoder import MAX_WORDS

    # the fewest beats that hold the longest instruction starting at the first beat's last word
    for name in boards.names():
        b = boards.load(name)
        p, n = b.memory.port_bytes, P.fetch_beats(b)
        assert (n - 1) * p < p - 4 + 4 * MAX_WORDS <= n * p, name
    # 9 words: 60 + 36 bytes on the 64-byte port (2 beats), 12 + 36 on the 16-byte one (3)
    assert MAX_WORDS == 9 and P.fetch_beats(boards.load("sim")) == 2 and P.fetch_beats(boards.load("pynq-z2")) == 3


def test_abuf_banks(tmp_path):
    """One ABUF bank per port word unless the board sets more; weight channels need two banks each."""
    from flightllm.hw import params as P

    assert P.abuf_banks(boards.load("sim")) == 16 and P.abuf_banks(boards.load("kv260")) == 4
    n4 = boards.load(str(Path(__file__).resolve().parent / "boards" / "narrow-4ch.toml"))
    assert P.abuf_banks(n4) == 8 == 2 * n4.accel.weight_channels
    sim = (boards.BOARD_DIR / "sim.toml").read_text()
    for extra, msg in [("abuf_banks = 8", "power of two >= the port's 16 words"),
                       ("abuf_banks = 24", "power of two"),
                       ("weight_channels = 16", "needs 32 ABUF banks; the board has 16"),
                       ("abuf_banks = 32\nabuf_words = 1000", "multiple of the 32 ABUF banks")]:
        t = sim.replace("channels = 1", "channels = 16").replace("sfu_lanes = 16", "sfu_lanes = 16\n" + extra)
        if "abuf_words = 1000" in extra:
            t = t.replace("abuf_words = 262144", "")
        (tmp_path / "b.toml").write_text(t)
        with pytest.raises(boards.BoardError, match=msg):
            boards.load(str(tmp_path / "b.toml"))
    ok = sim.replace("channels = 1", "channels = 16").replace("sfu_lanes = 16",
                                                              "sfu_lanes = 16\nweight_channels = 16\nabuf_banks = 32")
    (tmp_path / "b.toml").write_text(ok)
    assert P.abuf_banks(boards.load(str(tmp_path / "b.toml"))) == 32
