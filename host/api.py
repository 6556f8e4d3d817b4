"""Python API: ``from flightllm import LLM; llm = LLM("smollm2"); llm.generate("...")``."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from flightllm import boards
from flightllm.errors import FlightLLMError
from flightllm.compiler import compile_cached
from flightllm.compiler.artifact import Artifact, is_artifact
from flightllm.host.runtime import Runtime
from flightllm.host.tokenizer import StreamDecoder, TextCodec


@dataclass
class Sampling:
    temperature: float = 0.0      # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def check(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise FlightLLMError("sampling: need temperature >= 0, 0 < top_p <= 1, top_k >= 0")


def sample(logits: np.ndarray, s: Sampling, rng: np.random.Generator) -> int:
    if s.temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / s.temperature
    order = np.argsort(-z, kind="stable")
    if s.top_k:
        order = order[: s.top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if s.top_p < 1:
        keep = np.searchsorted(np.cumsum(p), s.top_p) + 1
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])


@dataclass
class Result:
    text: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"text": self.text, "prompt_token_ids": self.prompt_token_ids, "token_ids": self.token_ids,
                "stats": self.stats}


def load_artifact(path: str, board: str | None, ctx: int | None,
                  quantize: str | None = None) -> tuple[Artifact, boards.Board]:
    """A compiled artifact and the board it runs on: the one its header names, or ``board`` (a board file's path
    for boards outside boards/). ``Runtime`` checks that it is that board with the same configuration."""
    art = Artifact.load(path)
    h = art.header
    if ctx is not None and ctx != h["ctx"]:
        raise FlightLLMError(f"{path} is compiled for context {h['ctx']}; --ctx applies when compiling a model")
    if quantize is not None and quantize != h.get("quantize", "q8_0"):
        raise FlightLLMError(f"{path} is compiled with float matrices as {h.get('quantize', 'q8_0')}; --quantize "
                             f"applies when compiling a model")
    try:
        b = boards.load(board or h["board"])
    except FlightLLMError as e:
        raise FlightLLMError(f"{path} is compiled for board {h['board']}: {e}; pass its board file with --board") \
            from None
    return art, b


class LLM:
    def __init__(self, model: str = "smollm2", backend: str = "fsim", board: str | None = None,
                 ctx: int | None = None, quantize: str | None = None):
        """``model``: 'smollm2', a GGUF file or Hugging Face checkpoint folder (compiled for ``board``, default
        ``sim``, and cached), or an artifact from ``flightllm compile`` (it runs on the board it was compiled for).
        ``board``: a name or a board file. ``quantize``: q8_0 (default) or q4_1, the format float matrices are
        compiled to."""
        if is_artifact(model):
            self.art, b = load_artifact(model, board, ctx, quantize)
        else:
            b = boards.load(board or "sim")                     # a board file's path too
            self.art = compile_cached(model, board or "sim", ctx, quantize or "q8_0")
        h = self.art.header
        self.codec = TextCodec(h["tokenizer_json"], h["chat_template"], h["eos"], h["bos"], h["add_bos"])
        self.rt = Runtime(self.art, backend, board=b)
        self.stop_ids = set(h["stop_ids"])
        self.last: Result | None = None

    # -- generation ------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str, chat: bool = False, system: str | None = None) -> list[int]:
        text = self.codec.chat(prompt, system) if chat else prompt
        ids = self.codec.encode(text)
        if not ids:
            raise FlightLLMError("the prompt is empty")
        return ids

    def stream(self, prompt: str, max_tokens: int = 32, chat: bool = False, system: str | None = None,
               sampling: Sampling | None = None) -> Iterator[str]:
        """Yields text pieces as tokens arrive; the full :class:`Result` is then in ``self.last``."""
        s = sampling or Sampling()
        s.check()
        if max_tokens < 1:
            raise FlightLLMError("-n/max_tokens must be at least 1")
        ids = self.prompt_ids(prompt, chat, system)
        self.rt.check_length(len(ids) + max_tokens)
        rng = np.random.default_rng(s.seed)
        logits, pst = self.rt.forward(ids, 0)
        dec = StreamDecoder(self.codec)
        out, decode_cycles, decode_bytes = [], [], []
        pos = len(ids)
        res = Result("", ids, out)
        self.last = res
        while True:
            tid = sample(logits[-1], s, rng)
            if tid in self.stop_ids:
                break
            out.append(tid)
            piece = dec.push(tid)
            res.text += piece
            if piece:
                yield piece
            if len(out) >= max_tokens:
                break
            logits, st = self.rt.forward([tid], pos)
            decode_cycles.append(st.cycles)
            decode_bytes.append(st.bytes_read)
            pos += 1
        res.text = self.codec.decode(out)
        res.stats = self._stats(pst.cycles, decode_cycles, decode_bytes)

    def generate(self, prompt: str, max_tokens: int = 32, chat: bool = False, system: str | None = None,
                 sampling: Sampling | None = None) -> Result:
        for _ in self.stream(prompt, max_tokens, chat, system, sampling):
            pass
        return self.last

    def _stats(self, prefill_cycles: int, decode_cycles: list[int], decode_bytes: list[int]) -> dict:
        b = self.rt.board
        clk = b.clock_hz
        per_tok = float(np.mean(decode_cycles)) if decode_cycles else 0.0
        bpt = float(np.mean(decode_bytes)) if decode_bytes else 0.0
        return {
            "backend": self.rt.backend, "board": b.name, "clock_mhz": b.clock_mhz,
            "prefill_cycles": int(prefill_cycles), "decode_cycles": [int(c) for c in decode_cycles],
            "bytes_per_token": int(round(bpt)),
            "tokens_per_s": round(clk / per_tok, 3) if per_tok else None,
            "bandwidth_efficiency": round((bpt / b.mem_bytes_per_cycle) / per_tok, 4) if per_tok else None,
        }

    # -- evaluation --------------------------------------------------------------------------------------
    def eval(self, text: str, max_tokens: int | None = None, stride: int | None = None) -> dict:
        """Perplexity by teacher forcing: logits of every position from the same compiled path. A text longer
        than the compiled context is scored in windows of that many tokens, each run from position 0, starting
        ``stride`` tokens apart (default: the context, consecutive windows). Each window scores only the tokens
        no earlier window scored, so with a stride below the context every token after the first window has at
        least ctx - stride tokens before it (a sliding window: closer to full-context perplexity, at ctx / stride
        times the runs). Consecutive windows leave each window's first token unscored (it is context only)."""
        w = self.rt.ctx
        stride = w if stride is None else stride
        if not 1 <= stride <= w:
            raise FlightLLMError(f"--stride must be in 1..{w} (the compiled context), got {stride}")
        ids = self.codec.encode(text)
        if max_tokens is not None:
            ids = ids[:max_tokens]
        if len(ids) < 2:
            raise FlightLLMError("eval needs a text of at least 2 tokens")
        nll, n, cycles, windows = 0.0, 0, 0, 0
        start, end = 0, 1                    # targets below `end` are scored (token 0 never is)
        while end < len(ids):
            win = ids[start:start + w]
            skip = max(0, end - 1 - start)   # the window's first targets an earlier window scored
            if len(win) - 1 > skip:
                logits, st = self.rt.forward(win, 0, all_logits=True)
                nll += nll_sum(logits, win, skip)
                n += len(win) - 1 - skip
                cycles += st.cycles
                windows += 1
            end = start + len(win)
            start += stride
        return {"tokens": len(ids), "scored": n, "windows": windows, "stride": stride,
                "perplexity": math.exp(nll / n), "cycles": cycles}


def nll_sum(logits: np.ndarray, ids, skip: int = 0) -> float:
    """Sum of the negative log-likelihoods of ids[1 + skip:] under logits[skip:-1], in float64."""
    lp = logits[skip:len(ids) - 1].astype(np.float64)
    mx = lp.max(-1, keepdims=True)
    lse = (mx + np.log(np.exp(lp - mx).sum(-1, keepdims=True)))[:, 0]
    return float((lse - lp[np.arange(len(lp)), np.asarray(ids[1 + skip:])]).sum())


def perplexity(logits: np.ndarray, ids) -> float:
    """exp(mean negative log-likelihood of ids[1:] under logits[:-1]), in float64."""
    return math.exp(nll_sum(logits, ids) / (len(ids) - 1))
