"""Static validation of an artifact before anything reaches a device.

Every program must decode, end, and keep every memory access inside a region with the right permission and
every on-chip access inside its buffer, for every run-time POS the runtime can set (0 .. ctx - tokens). The
device enforces the same rules at run time (the simulators and the RTL stop with an error code); this check
turns a corrupt or hostile artifact into one clear error before it is loaded.
"""
from __future__ import annotations

from flightllm.errors import CompileError, DeviceError, ISAError
from flightllm.hw.regs import region_writes
from flightllm.formats import BLOCK, QACT_BLOCK_BYTES, row_bytes, split_span, weight_span
from flightllm.isa import LdFmt, MiscOp, Op, StFmt, disassemble, extents, misc_overlap, mm_outputs_overlap
from flightllm.compiler.memmap import PAGE, MemoryMap


def _mem_ranges(ins, pos: int, tokens_max: int, channels: int = 1, split_stride: int = 0):
    """(lo, hi, write) memory byte ranges of one instruction at POS = pos; a split MV/MM on ``channels`` weight
    channels reads one range per channel, ``split_stride`` apart."""
    f = ins.f
    if ins.op == Op.LD:
        nb = {LdFmt.I32: f["cols"] * 4, LdFmt.Q8_0: row_bytes(1, f["cols"]),
              LdFmt.QACT: f["cols"] // BLOCK * QACT_BLOCK_BYTES}[LdFmt(f["fmt"])]
        if f["idx"]:
            # gathered rows: the index words, and the whole table the ids may select (checked at run time)
            return [(f["idx_addr"], f["idx_addr"] + 4 * f["rows"], False)]
        lo = f["addr"] + pos * f["pos_stride"]
        return [(lo, lo + (f["rows"] - 1) * f["src_stride"] + nb, False)]
    if ins.op == Op.ST:
        es = 4 if f["fmt"] == StFmt.I32 else 2
        lo = f["addr"] + pos * f["pos_stride"]
        return [(lo, lo + (f["rows"] - 1) * f["dst_stride"] + (f["cols"] - 1) * f["elem_stride"] + es, True)]
    if ins.op in (Op.MM, Op.MV):
        rows, cols = extents(ins.op, f, pos).values()
        if f["split"] and channels > 1:
            n = split_span(f["fmt"], f["sp_n"], rows, cols, f["wstride"], channels)
            return [(f["waddr"] + c * split_stride, f["waddr"] + c * split_stride + n, False) for c in range(channels)]
        return [(f["waddr"], f["waddr"] + weight_span(f["fmt"], f["sp_n"], rows, cols, f["wstride"]), False)]
    return []


def _buf_ranges(ins, pos: int):
    """(buffer, lo, hi) on-chip ranges, buffer in {'A', 'Q'} (ABUF words, QBUF elements)."""
    f = ins.f
    span = lambda base, stride, rows, n: (base, base + (rows - 1) * stride + n)  # noqa: E731
    if ins.op == Op.LD:
        return [("Q" if f["fmt"] == LdFmt.QACT else "A", *span(f["dst"], f["dst_stride"], f["rows"], f["cols"]))]
    if ins.op == Op.ST:
        return [("A", *span(f["src"], f["src_stride"], f["rows"], f["cols"]))]
    if ins.op in (Op.MM, Op.MV):
        rows, cols = extents(ins.op, f, pos).values()
        return [("Q", *span(f["xaddr"], f["xstride"], f["tokens"], cols)),
                ("A", *span(f["yaddr"], f["ystride"], f["tokens"], rows))]
    if ins.op == Op.MISC:
        fn = MiscOp(f["fn"])
        n = extents(ins.op, f, pos)["n"]
        w = n + (f["rows"] - 1 if fn == MiscOp.SOFTMAX and f["causal"] else 0)
        out = [("A", *span(f["src"], f["src_stride"], f["rows"], w))]
        if fn == MiscOp.QUANT:
            out.append(("Q", *span(f["dst"], f["dst_stride"], f["rows"], -(-n // BLOCK) * BLOCK)))
        else:
            out.append(("A", *span(f["dst"], f["dst_stride"], f["rows"], 1 if fn == MiscOp.ARGMAX else w)))
        if fn in (MiscOp.ADD, MiscOp.SILU_MUL, MiscOp.ROPE):
            out.append(("A", *span(f["src2"], f["src2_stride"], f["rows"], f["imm"] if fn == MiscOp.ROPE else n)))
        if fn == MiscOp.RMSNORM:
            out.append(("A", f["src2"], f["src2"] + n))
        return out
    return []


def check_program(words, memmap: MemoryMap, pos_max: int, abuf_words: int, qbuf_bytes: int, name: str = "program",
                  channels: int = 1, split_stride: int = 0):
    try:
        prog = disassemble(words)
    except ISAError as e:
        raise CompileError(f"{name}: {e}") from None
    regions = list(memmap.regions.values())
    for pc, ins in prog:
        f = ins.f
        if ins.op == Op.LD and ((f["idx"] and f["idx_addr"] % 4) or (f["fmt"] == LdFmt.I32 and (
                f["addr"] % 4 or f["src_stride"] % 4 or f["pos_stride"] % 4))):
            raise CompileError(f"{name} pc {pc}: LD not aligned to 4-byte words")
        if ins.op == Op.MISC and f["fn"] == MiscOp.ROPE and f["n_pos"]:
            raise CompileError(f"{name} pc {pc}: ROPE with n_pos (n + POS must be whole heads at every POS)")
        for pos in {0, pos_max}:
            for lo, hi, write in _mem_ranges(ins, pos, 0, channels, split_stride):
                r = next((r for r in regions if r.base <= lo and hi <= r.end), None)
                if r is None:
                    raise CompileError(f"{name} pc {pc}: {ins.op.name} touches [{lo:#x}, {hi:#x}) outside every "
                                       f"region (POS {pos})")
                if write and not r.writable:
                    raise CompileError(f"{name} pc {pc}: {ins.op.name} writes read-only region '{r.name}'")
            ext = extents(ins.op, f, pos)
            if ins.op in (Op.MM, Op.MV) and mm_outputs_overlap(ext["rows"], f["tokens"], f["ystride"]):
                raise CompileError(f"{name} pc {pc}: {ins.op.name} tokens' output rows overlap (POS {pos})")
            if ins.op == Op.MISC and misc_overlap(f, ext["n"]) is not None:
                raise CompileError(f"{name} pc {pc}: MISC writes ABUF over a source other than in place (POS {pos})")
            for buf, lo, hi in _buf_ranges(ins, pos):
                cap = abuf_words if buf == "A" else qbuf_bytes
                if hi > cap:
                    raise CompileError(f"{name} pc {pc}: {ins.op.name} reaches {'ABUF' if buf == 'A' else 'QBUF'} "
                                       f"entry {hi} of {cap} (POS {pos})")
    return prog


def check_artifact(art, board) -> None:
    """Validate every program of an artifact against its memory map and the board's buffers."""
    h = art.header
    mm = art.memmap
    if mm.top > art.mem_size or art.image.size > art.mem_size:
        raise CompileError("artifact: image or regions larger than its device memory")
    try:
        region_writes([(r.base, r.size, r.perm) for r in mm.regions.values()])
    except DeviceError as e:
        raise CompileError(f"artifact: memory map does not fit the region registers: {e}") from None
    if art.split_stride < 0 or art.split_stride % PAGE:
        raise CompileError(f"artifact: split stride {art.split_stride} is not a multiple of {PAGE}")
    if not mm["program"].executable or mm["program"].writable:
        raise CompileError("artifact: the program region must be executable and read-only")
    for name, p in h["programs"].items():
        r = mm["program"]
        if not (r.base <= p["addr"] and p["addr"] + 4 * p["words"] <= r.end):
            raise CompileError(f"artifact: program {name} lies outside the program region")
        check_program(art.program_words(name), mm, int(h["ctx"]) - int(p["tokens"]), board.accel.abuf_words,
                      board.accel.qbuf_bytes, name, board.accel.weight_channels, art.split_stride)
