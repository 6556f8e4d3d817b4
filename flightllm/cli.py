"""The `flightllm` command line. Every user error ends as one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from flightllm.errors import FlightLLMError


def _model_args(p, board=True, backend=True, artifact=True):
    p.add_argument("-m", "--model", default="smollm2",
                   help="'smollm2', a LLaMA-family GGUF file or Hugging Face checkpoint folder (config.json, "
                        "*.safetensors, tokenizer.json)" + (", or an artifact from `flightllm compile`"
                                                                      if artifact else ""))
    if board:
        p.add_argument("--board", default=None, help="board name or file (boards/*.toml); default: sim, or the "
                                                     "board an artifact was compiled for")
    if backend:
        p.add_argument("--backend", default="fsim", choices=["fsim", "rtl", "board"],
                       help="fsim: functional simulator; rtl: Verilator model of the RTL; board: FPGA via PYNQ")
    p.add_argument("--ctx", type=int, default=None, help="context length to compile for (default: board maximum)")
    p.add_argument("--quantize", default=None, choices=["q8_0", "q4_1"],
                   help="format of float (F16/F32/BF16) matrices when compiling (default q8_0; q4_1: 20 bytes a "
                        "32-block instead of 34); quantised GGUF tensors keep theirs")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flightllm", description="Open FPGA accelerator for LLM inference")
    ap.add_argument("--version", action="version", version=f"flightllm {__import__('flightllm').__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="generate text")
    _model_args(g)
    g.add_argument("-p", "--prompt", required=True)
    g.add_argument("-n", "--max-tokens", type=int, default=32)
    g.add_argument("--chat", action="store_true", help="apply the model's chat template")
    g.add_argument("--system", default=None, help="system message for --chat")
    g.add_argument("--temp", type=float, default=0.0, help="temperature (0 = greedy)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")

    e = sub.add_parser("eval", help="perplexity of a text by teacher forcing")
    _model_args(e)
    e.add_argument("--text", required=True, help="text file")
    e.add_argument("--max-tokens", type=int, default=None)
    e.add_argument("--stride", type=int, default=None,
                   help="tokens between the starts of context-sized windows (default: the context; smaller: a "
                        "sliding window, each token scored once with more context before it, at more runs)")
    e.add_argument("--json", action="store_true")

    c = sub.add_parser("compile", help="compile a model for a board into an artifact")
    _model_args(c, backend=False, artifact=False)
    c.add_argument("-o", "--output", required=True)

    d = sub.add_parser("disasm", help="disassemble an artifact's programs or a raw instruction file")
    d.add_argument("file")
    d.add_argument("--program", default=None, help="program name in an artifact (default: all)")

    k = sub.add_parser("kernel", help="run one MV/MM on random weights; compare backends")
    k.add_argument("op", choices=["mv", "mm"])
    k.add_argument("--backend", default="fsim", choices=["fsim", "rtl"])
    k.add_argument("--board", default="sim")
    k.add_argument("--rows", type=int, default=1536)
    k.add_argument("--cols", type=int, default=576)
    k.add_argument("--wbits", type=int, default=4, choices=[4, 8])
    k.add_argument("--sparsity", default="16:16", help="N:16 with N in 2, 4, 8, 16")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--tokens", type=int, default=None, help="tokens for mm (default 8)")
    k.add_argument("--json", action="store_true")

    b = sub.add_parser("bench", help="decode speed: simulated tokens/s at the board clock and simulator speed")
    _model_args(b)
    b.add_argument("-p", "--prompt", default="The quick brown fox")
    b.add_argument("-n", "--max-tokens", type=int, default=16)
    b.add_argument("--json", action="store_true")

    fz = sub.add_parser("fuzz", help="mutation-fuzz the GGUF or checkpoint loader or the instruction "
                                     "decoder/executor (parity: the same streams on fsim and the RTL, fresh devices "
                                     "per case; parity-carry: the same on one pair of devices, on-chip state "
                                     "carried; faults: AXI fault injection on the RTL; these need Verilator)")
    fz.add_argument("target", choices=["gguf", "hf", "isa", "parity", "parity-carry", "faults"])
    fz.add_argument("-n", "--cases", type=int, default=10000)
    fz.add_argument("--seed", type=int, default=0)
    fz.add_argument("--board", default="sim", help="board name or file (isa, parity, parity-carry, faults); one with "
                                                   "weight channels also fuzzes split MV/MM and their masters")
    fz.add_argument("--json", action="store_true")

    bl = sub.add_parser("boards", help="list board definitions")
    bl.add_argument("--json", action="store_true")

    i = sub.add_parser("info", help="model and compiled-layout summary")
    _model_args(i, backend=False)

    # board build flow (hw/flow/): vendor projects, resource estimates, loading through pynq
    bd = sub.add_parser("build", help="Verilog + vendor project for a board (Vitis xclbin / Vivado bit+hwh)")
    bd.add_argument("--board", required=True)
    bd.add_argument("-o", "--output", default=None, help="project folder (default: build/<board>)")
    bd.add_argument("--run", action="store_true", help="also run vivado / v++ (they must be on PATH)")
    bd.add_argument("--estimate", action="store_true", help="yosys synth_xilinx resource estimate (cached)")
    bd.add_argument("--no-cache", action="store_true", help="with --estimate: synthesise again")
    bd.add_argument("--flat", action="store_true",
                    help="with --estimate: synthesise the whole design flattened (the reference for the default "
                         "per-module method; hours on the big boards)")
    bd.add_argument("--lint", action="store_true",
                    help="verilator --lint-only (docs/rtl.md's flags) of the board's Verilog for simulation, yosys "
                         "and the vendor flow; exit 1 on any message")
    bd.add_argument("--json", action="store_true")
    dv = sub.add_parser("devices", help="FPGA devices pynq sees (exit 1 when there are none)")
    dv.add_argument("--json", action="store_true")
    fl = sub.add_parser("flash", help="load a .bit (+.hwh) / .xclbin onto the board through pynq")
    fl.add_argument("--board", required=True)
    fl.add_argument("path")
    fl.add_argument("--device", type=int, default=0, help="device index (see `flightllm devices`)")
    return ap


def _sparsity(s: str) -> int:
    n, _, m = s.partition(":")
    if not n.isdigit() or m not in ("16", "") or int(n) not in (2, 4, 8, 16):
        raise FlightLLMError(f"--sparsity '{s}': expected N:16 with N in 2, 4, 8, 16")
    return int(n)


def cmd_generate(a) -> int:
    from flightllm.host.api import LLM, Sampling

    s = Sampling(a.temp, a.top_k, a.top_p, a.seed)
    s.check()
    llm = LLM(a.model, backend=a.backend, board=a.board, ctx=a.ctx, quantize=a.quantize)
    if a.json:
        r = llm.generate(a.prompt, a.max_tokens, chat=a.chat, system=a.system, sampling=s)
        print(json.dumps(r.to_dict()))
        return 0
    for piece in llm.stream(a.prompt, a.max_tokens, chat=a.chat, system=a.system, sampling=s):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    st = llm.last.stats
    if st.get("tokens_per_s"):
        print(f"[{st['backend']} on {st['board']}: {st['tokens_per_s']:.1f} tokens/s at {st['clock_mhz']:g} MHz, "
              f"{st['bandwidth_efficiency'] * 100:.1f}% of memory bandwidth]", file=sys.stderr)
    return 0


def cmd_eval(a) -> int:
    from flightllm.host.api import LLM

    try:
        with open(a.text, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise FlightLLMError(f"cannot read text file {a.text}: {getattr(e, 'strerror', None) or e}") from None
    if a.stride is not None and a.stride < 1:
        raise FlightLLMError(f"--stride must be at least 1, got {a.stride}")
    llm = LLM(a.model, backend=a.backend, board=a.board, ctx=a.ctx, quantize=a.quantize)
    r = llm.eval(text, a.max_tokens, a.stride)
    print(json.dumps(r) if a.json else f"tokens {r['tokens']}  perplexity {r['perplexity']:.4f}")
    return 0


def cmd_compile(a) -> int:
    from flightllm import boards
    from flightllm.compiler import compile_model, source
    from flightllm.compiler.artifact import is_artifact

    if is_artifact(a.model):
        raise FlightLLMError(f"{a.model} is already a compiled artifact; compile takes a GGUF or a checkpoint folder")
    art = compile_model(source.load_model(source.resolve_model(a.model)), boards.load(a.board or "sim"), a.ctx,
                        a.quantize or "q8_0")
    art.save(a.output)
    n = sum(p["instructions"] for p in art.header["programs"].values())
    print(f"{a.output}: {art.mem_size / 2**20:.1f} MiB device image, {len(art.header['programs'])} programs, "
          f"{n} instructions")
    return 0


def cmd_disasm(a) -> int:
    import numpy as np

    from flightllm import isa
    from flightllm.compiler.artifact import MAGIC, Artifact

    try:
        with open(a.file, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise FlightLLMError(f"cannot read {a.file}: {e.strerror}") from None
    if head == MAGIC:
        art = Artifact.load(a.file)
        names = [a.program] if a.program else list(art.header["programs"])
        for n in names:
            if n not in art.header["programs"]:
                raise FlightLLMError(f"no program '{n}' (have: {', '.join(art.header['programs'])})")
            print(f"; program {n}")
            for pc, ins in isa.disassemble(art.program_words(n)):
                print(f"{pc:6d}: {ins}")
        return 0
    data = open(a.file, "rb").read()
    if len(data) % 4:
        raise FlightLLMError(f"{a.file}: length {len(data)} is not a multiple of 4 (not an instruction stream)")
    for pc, ins in isa.disassemble(np.frombuffer(data, "<u4")):
        print(f"{pc:6d}: {ins}")
    return 0


def cmd_kernel(a) -> int:
    from flightllm.host import kernel

    tokens = a.tokens if a.tokens is not None else (1 if a.op == "mv" else 8)
    r = kernel.run(a.op, a.backend, a.board, a.rows, a.cols, a.wbits, _sparsity(a.sparsity), a.seed, tokens)
    if a.json:
        print(json.dumps(r))
    else:
        for k_, v in r.items():
            print(f"{k_:>22}: {v}")
    return 0 if r["bit_exact"] else 1


def cmd_bench(a) -> int:
    from flightllm.host.api import LLM

    if a.max_tokens < 1:                 # the figures are per decoded token
        raise FlightLLMError("-n/max_tokens must be at least 1")
    t0 = time.perf_counter()
    llm = LLM(a.model, backend=a.backend, board=a.board, ctx=a.ctx, quantize=a.quantize)
    t_load = time.perf_counter() - t0
    ids = llm.prompt_ids(a.prompt)
    llm.rt.check_length(len(ids) + a.max_tokens)     # before the prefill, not after the decode steps that fit
    t1 = time.perf_counter()
    logits, pst = llm.rt.forward(ids, 0)
    t_prefill = time.perf_counter() - t1
    tok, pos, cyc, byt, walls = int(logits[-1].argmax()), len(ids), [], [], []
    for _ in range(a.max_tokens):
        t = time.perf_counter()
        logits, st = llm.rt.forward([tok], pos)
        walls.append(time.perf_counter() - t)
        cyc.append(st.cycles)
        byt.append(st.bytes_read)
        tok, pos = int(logits[-1].argmax()), pos + 1
    stats = llm._stats(pst.cycles, cyc, byt)
    walls.sort()
    r = {"backend": a.backend, "board": llm.rt.board.name, "prompt_tokens": len(ids), "decode_tokens": a.max_tokens,
         "load_s": round(t_load, 2), "prefill_wall_s": round(t_prefill, 3),
         "host_decode_tokens_per_s": round(len(walls) / sum(walls), 2),
         "host_decode_median_s": round(walls[len(walls) // 2], 4),
         "sim_tokens_per_s": stats["tokens_per_s"], "sim_decode_cycles_mean": round(sum(cyc) / len(cyc)),
         "bytes_per_token": stats["bytes_per_token"], "bandwidth_efficiency": stats["bandwidth_efficiency"],
         "prefill_cycles": pst.cycles, "clock_mhz": stats["clock_mhz"],
         # how fast the simulator itself runs (host-dependent; the simulated figures above are not)
         "host_sim_cycles_per_s": round((pst.cycles + sum(cyc)) / (t_prefill + sum(walls)))}
    if a.json:
        print(json.dumps(r))
    else:
        for k_, v in r.items():
            print(f"{k_:>26}: {v}")
    return 0


def cmd_fuzz(a) -> int:
    from flightllm import fuzz

    if a.cases < 1:
        raise FlightLLMError("fuzz: --cases must be at least 1")
    r = fuzz.run(a.target, a.cases, a.seed, board=a.board)
    if a.json:
        print(json.dumps(r.to_dict()))
    else:
        for k_, v in r.to_dict().items():
            print(f"{k_:>22}: {v}")
    return 0 if r.clean else 1


def cmd_boards(a) -> int:
    from flightllm import boards

    bs = [boards.load(n) for n in boards.names()]
    if a.json:
        print(json.dumps([b.to_dict() for b in bs]))
        return 0
    for b in bs:
        ac = b.accel
        print(f"{b.name:8} {b.clock_mhz:6.1f} MHz  {b.bandwidth_gbps:7.1f} GB/s  {ac.weight_channels} x {ac.chains:2d} "
              f"chains x {ac.chain_length:2d} DSP = {ac.dsps:5d} DSP  {b.description}")
    return 0


def cmd_info(a) -> int:
    from flightllm.compiler import compile_cached
    from flightllm.compiler.artifact import is_artifact
    from flightllm.host.api import load_artifact

    art = load_artifact(a.model, a.board, a.ctx, a.quantize)[0] if is_artifact(a.model) else \
        compile_cached(a.model, a.board or "sim", a.ctx, a.quantize or "q8_0")
    h = art.header
    print(json.dumps({"model": h["model"], "board": h["board"], "ctx": h["ctx"], "buckets": h["buckets"],
                      "quantize": h.get("quantize", "q8_0"),
                      "weight_bytes": h["weight_bytes"], "memmap": h["memmap"],
                      "programs": {k: v["instructions"] for k, v in h["programs"].items()}}, indent=1))
    return 0


def cmd_build(a) -> int:
    from flightllm import boards
    from flightllm.hw import flow

    b = boards.load(a.board)
    if a.lint:
        return _lint(b, a.json)
    if a.estimate:
        from flightllm.hw.flow.estimate import estimate

        r = estimate(b, use_cache=not a.no_cache, flat=a.flat,
                     progress=None if a.json else lambda m: print(m, file=sys.stderr))
        if a.json:
            print(json.dumps(r))
        else:
            for k_ in ("dsp", "lut", "ff", "bram", "uram"):
                av = (r["available"] or {}).get(k_)
                print(f"{k_:>5}: {r[k_]:>10g}" + (f"  of {av:g} available ({r[k_] / av * 100:.1f}%)" if av else ""))
            print(f" fits: {r['fits']}\n{r['method']}")
        return 0 if r["fits"] is not False else 1
    prj = flow.build(b, a.output or os.path.join("build", b.name), run=a.run)
    if a.json:
        print(json.dumps({"board": b.name, "out": str(prj.out), "files": prj.files, "commands": prj.shell_commands(),
                          "outputs": prj.outputs, "notes": prj.notes, "ran": a.run}))
        return 0
    print(f"{prj.out}: " + ", ".join(prj.files))
    for n in prj.notes:
        print(f"note: {n}")
    if not a.run and prj.commands:
        print("to build the " + " + ".join(prj.outputs[-2:]) + " with the vendor tools, run:")
        for c in prj.shell_commands():
            print(f"  {c}")
    return 0


def _lint(b, as_json: bool) -> int:
    import tempfile

    from flightllm.hw.top import TARGETS
    from flightllm.sim import rtl_device

    res = {}
    with tempfile.TemporaryDirectory(prefix="flightllm-lint-") as d:
        for t in TARGETS:
            r = rtl_device.lint(b, Path(d) / t, t)
            res[t] = {"clean": r.returncode == 0 and not r.stderr.strip(), "messages": r.stderr.strip()}
    if as_json:
        print(json.dumps({"board": b.name, "flags": rtl_device.LINT_FLAGS, "targets": res}))
    else:
        for t, r in res.items():
            print(f"{t}: {'clean' if r['clean'] else 'NOT clean'}" + (f"\n{r['messages']}" if r["messages"] else ""))
    return 0 if all(r["clean"] for r in res.values()) else 1


def cmd_devices(a) -> int:
    from flightllm.hw.flow.device import NoDevice, devices

    try:
        ds = devices()
    except NoDevice as e:
        print(json.dumps([]) if a.json else f"flightllm: {e}", file=sys.stdout if a.json else sys.stderr)
        return 1
    print(json.dumps(ds) if a.json else "\n".join(f"{d['index']}: {d['name']} ({d['type']})" for d in ds))
    return 0


def cmd_flash(a) -> int:
    from flightllm import boards
    from flightllm.hw.flow.device import flash

    r = flash(boards.load(a.board), a.path, a.device)
    print(f"loaded {r['file']} on {r['device']}; IP: {', '.join(r['ip']) or '-'}")
    return 0


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    try:
        return globals()[f"cmd_{a.cmd}"](a)
    except FlightLLMError as e:
        print(f"flightllm: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("flightllm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except MemoryError:
        print("flightllm: error: out of memory", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
