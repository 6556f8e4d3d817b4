"""The weight channels' engines' ABUF ports onto the ABUF banks: two barrel rotators instead of a crossbar.

C engines, each with two ABUF read ports and two write ports (port 0 the even row, port 1 the odd row of a
pair; hw/mpe.py), share NL single-word banks (word a in bank a % NL at row a // NL; NL a power of two, NL >= 2C).
The engines run in lockstep on one control stream (hw/top.py), so in any cycle their addresses are one run of
consecutive words from engine 0's port 0 address A (formats.split_row_map): engine c's row of a split MV/MM is
global row r * C + c, so

- a paired format (row pairs, both ports): engine c's port h addresses A + 2c + h;
- any other format (port 0 only): engine c's port 0 addresses A + c.

A non-split MV/MM runs engine 0 alone, the C = 1 case of the same rule. So port k = 2c + h (paired) or k = c
sits at *position* p = k (resp. c) of the run, and bank i serves position (i - A) mod NL: a rotation of the
positions by A mod NL, log2(NL) stages of 2:1 multiplexers. The crossbar it replaces compared every port's
address with every bank (2C x NL address compares and multiplexers, read data NL:1 per port: 78.5k LUT in the
U280's top with 16 engines on 32 banks, growing as C x NL); this grows as NL x log2(NL).

The rotation amount is engine 0's address whether or not engine 0's port is enabled: when a weight channel's
row is padding, every later channel's is too (rows past the operand's end), so an enabled port always lies in
the run. ``rpair`` / ``wpair`` say which arrangement the read / write ports use this cycle (the engines' own
delayed mode: reads and writes of an instruction's last rows may overlap the next instruction's start).
"""
from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal


def rotate(m, vec, amt, name, right=False):
    """out[i] = vec[(i - amt) mod n] (left) or vec[(i + amt) mod n] (right); n = len(vec) a power of two,
    ``amt`` at least log2(n) bits. One named signal per stage and position: nested Muxes would repeat their
    operands in the Verilog."""
    n = len(vec)
    for s in range((n - 1).bit_length()):
        k = -(1 << s) if right else 1 << s
        nxt = []
        for i in range(n):
            sig = Signal(len(vec[i]), name=f"{name}_s{s}_{i}")
            m.d.comb += sig.eq(Mux(amt[s], vec[(i - k) % n], vec[i]))
            nxt.append(sig)
        vec = nxt
    return vec


def _ports(n, aw, pre):
    """n read and write ports: (ren, raddr, rdata, wen, waddr, wdata), lists of n signals each."""
    return tuple([Signal(w, name=f"{pre}_{f}{k}") for k in range(n)]
                 for f, w in (("ren", 1), ("raddr", aw), ("rdata", 32), ("wen", 1), ("waddr", aw), ("wdata", 32)))


class EngineAbufPorts(Elaboratable):
    """Engine side: ``ren/raddr/rdata`` and ``wen/waddr/wdata``, lists of 2C ports, port k = 2c + h (engine c,
    port h), addresses ``addr_bits`` wide; ``rpair`` (with the read) and ``wpair`` (with the write) from engine 0.
    Bank side: ``bank_ren/bank_raddr`` (row), ``bank_rdata`` (the cycle after), ``bank_wen/bank_waddr/bank_wdata``,
    lists of NL."""

    def __init__(self, C: int, NL: int, addr_bits: int):
        assert NL & (NL - 1) == 0 and NL >= 2 * C >= 2, (C, NL)
        self.C, self.NL, self.addr_bits = C, NL, addr_bits
        self.lg = (NL - 1).bit_length()
        self.ren, self.raddr, self.rdata, self.wen, self.waddr, self.wdata = _ports(2 * C, addr_bits, "e")
        self.rpair = Signal()
        self.wpair = Signal()
        (self.bank_ren, self.bank_raddr, self.bank_rdata,
         self.bank_wen, self.bank_waddr, self.bank_wdata) = _ports(NL, max(addr_bits - self.lg, 1), "b")

    def _positions(self, m, ports, pair, name):
        """The run's NL positions: port k at p = k when ``pair``, engine c's port 0 at p = c otherwise; empty
        positions are zero (disabled)."""
        C, NL = self.C, self.NL
        w = len(ports[0])
        out = []
        for p in range(NL):
            a = ports[p] if p < 2 * C else None                       # paired: port p
            b = ports[2 * p] if p < C else None                       # unpaired: engine p's port 0
            if a is b:
                v = a if a is not None else Const(0, w)
            else:
                v = Mux(pair, a if a is not None else Const(0, w), b if b is not None else Const(0, w))
            sig = Signal(w, name=f"{name}_p{p}")
            m.d.comb += sig.eq(v)
            out.append(sig)
        return out

    def elaborate(self, platform):
        m = Module()
        C, NL, lg = self.C, self.NL, self.lg
        P = 2 * C
        row = lambda a: a[lg:] if self.addr_bits > lg else Const(0, 1)     # noqa: E731
        # writes: (en, row, data) per port, positioned and rotated onto the banks by A = engine 0's address
        wports = [Cat(self.wen[k], row(self.waddr[k]), self.wdata[k]) for k in range(P)]
        wrot = rotate(m, self._positions(m, wports, self.wpair, "wpos"), self.waddr[0][:lg], "wrot")
        rb = len(self.bank_raddr[0])
        for i in range(NL):
            m.d.comb += [self.bank_wen[i].eq(wrot[i][0]), self.bank_waddr[i].eq(wrot[i][1:1 + rb]),
                         self.bank_wdata[i].eq(wrot[i][1 + rb:])]
        # reads: (en, row) the same way; the data comes back the next cycle, rotated back by the registered A
        rports = [Cat(self.ren[k], row(self.raddr[k])) for k in range(P)]
        rrot = rotate(m, self._positions(m, rports, self.rpair, "rpos"), self.raddr[0][:lg], "rrot")
        for i in range(NL):
            m.d.comb += [self.bank_ren[i].eq(rrot[i][0]), self.bank_raddr[i].eq(rrot[i][1:1 + rb])]
        ra = Signal(lg, name="ra_q")
        rp = Signal(name="rpair_q")
        m.d.sync += [ra.eq(self.raddr[0][:lg]), rp.eq(self.rpair)]
        back = rotate(m, self.bank_rdata, ra, "rback", right=True)      # back[p] = bank (A + p) mod NL
        for c in range(C):
            for h in range(2):
                k = 2 * c + h
                if h == 0 and c:
                    m.d.comb += self.rdata[k].eq(Mux(rp, back[k], back[c]))
                else:
                    m.d.comb += self.rdata[k].eq(back[k])               # port 1 reads only when paired
        return m
