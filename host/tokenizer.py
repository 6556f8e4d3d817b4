"""Tokenizer built from the GGUF's own vocabulary or a checkpoint's tokenizer.json (no hub access), and its chat
template."""
from __future__ import annotations

import contextlib
import os
import sys

from flightllm.errors import ModelError

CONTROL = 3   # GGUF token_type of special/control tokens


def build_tokenizer_json(tok: dict) -> str:
    """GGUF tokenizer metadata -> a `tokenizers` JSON string (stored in the compiled artifact); a Hugging Face
    checkpoint's tokenizer.json (compiler/hf_model.py) is that string already."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if tok.get("json") is not None:
        return tok["json"]
    if tok.get("model") != "gpt2":
        raise ModelError(f"tokenizer model '{tok.get('model')}' is not supported yet (GPT-2 style BPE only)")
    tokens, merges = tok.get("tokens"), tok.get("merges")
    if not tokens or merges is None:
        raise ModelError("GGUF has no tokenizer vocabulary/merges")
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise ModelError(f"malformed BPE merge {m[:40]!r}")
        if a not in vocab or b not in vocab or a + b not in vocab:    # tokenizers 0.23 panics on these
            raise ModelError(f"BPE merge {m[:40]!r} joins or makes a token not in the vocabulary")
        pairs.append((a, b))
    try:
        with _stderr_silenced():
            tk = Tokenizer(models.BPE(vocab, pairs, ignore_merges=False))
        pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if tok.get("pre") in ("smollm", "starcoder", "refact", "qwen2", "llama3", "llama-bpe", "deepseek-llm"):
            pre.insert(0, pre_tokenizers.Digits(individual_digits=tok.get("pre") in ("smollm", "starcoder", "refact")))
        tk.pre_tokenizer = pre_tokenizers.Sequence(pre)
        tk.decoder = decoders.ByteLevel()
        types = tok.get("token_type") or []
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                               for t, ty in zip(tokens, types) if ty == CONTROL])
        return tk.to_str()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - plain Exception on a bad vocabulary, or a Rust panic
        raise ModelError(f"GGUF tokenizer is inconsistent: {' '.join(str(e).split())[:120]}") from None


@contextlib.contextmanager
def _stderr_silenced():
    """The tokenizers library panics on some malformed tokenizer JSON instead of raising (tokenizers 0.23: a BPE
    continuing_subword_prefix longer than a merged token, found by `fuzz hf`); the panic reaches Python as an
    exception, but Rust's panic hook first prints its message (and a backtrace with RUST_BACKTRACE) on fd 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def parse_tokenizer(text: str, what: str):
    """A `tokenizers.Tokenizer` from JSON text; any failure, a panic of the library included, is a one-line
    ModelError naming ``what``."""
    from tokenizers import Tokenizer

    try:
        with _stderr_silenced():
            return Tokenizer.from_str(text)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - plain Exception, or a Rust panic (pyo3's PanicException)
        raise ModelError(f"{what}: not a tokenizer the tokenizers library reads "
                         f"({' '.join(str(e).split())[:120]})") from None


class TextCodec:
    """Encode/decode text, render chat prompts, and stream-decode token by token."""

    def __init__(self, tokenizer_json: str, chat_template: str | None, eos: int, bos: int = -1,
                 add_bos: bool = False):
        self.tk = parse_tokenizer(tokenizer_json, "the artifact's tokenizer")
        self.chat_template = chat_template
        self.eos, self.bos, self.add_bos = eos, bos, add_bos

    def encode(self, text: str) -> list[int]:
        ids = self.tk.encode(text, add_special_tokens=False).ids
        if ids[:1] == [self.bos]:               # a chat template that writes the BOS itself (LLaMA 3's): not twice
            return ids
        return ([self.bos] if self.add_bos and self.bos >= 0 else []) + ids

    def decode(self, ids) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=False)

    def token_str(self, i: int) -> str:
        return self.tk.id_to_token(i) or ""

    def chat(self, user: str, system: str | None = None) -> str:
        if not self.chat_template:
            raise ModelError("this model has no chat template; drop --chat")
        import jinja2.sandbox

        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(msg):               # what transformers gives templates: they call it on bad input
            raise jinja2.TemplateError(str(msg))

        def strftime_now(fmt):                  # LLaMA 3.x templates put today's date in the system turn
            import datetime
            return datetime.datetime.now().strftime(fmt)

        try:
            return env.from_string(self.chat_template).render(
                messages=msgs, add_generation_prompt=True, raise_exception=raise_exception,
                strftime_now=strftime_now, bos_token=self.token_str(self.bos) if self.bos >= 0 else "",
                eos_token=self.token_str(self.eos) if self.eos >= 0 else "")
        except jinja2.TemplateError as e:
            raise ModelError(f"chat template failed: {e}") from None


class StreamDecoder:
    """Turns token ids into text pieces as they arrive, holding back incomplete UTF-8 sequences."""

    def __init__(self, codec: TextCodec):
        self.codec, self.ids, self.emitted = codec, [], ""

    def push(self, tid: int) -> str:
        self.ids.append(tid)
        text = self.codec.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[len(self.emitted):], text
        return piece
