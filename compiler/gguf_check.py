"""Structural check of a GGUF file before any reader trusts its size fields.

Walks the header, metadata and tensor table with every count, length, dimension and offset checked against
the file's real size, so a truncated or hostile file is rejected in bounded time and memory with one line.
"""
from __future__ import annotations

import os
import struct

from flightllm.errors import ModelError

MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_DIMS = 4
# GGML type id -> (block elements, block bytes); only the ones flightllm maps, plus common ones to name.
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34),
              6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 30: ("BF16", 1, 2)}
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class _Cursor:
    def __init__(self, fh, size: int, path):
        self.fh, self.size, self.path = fh, size, path

    def need(self, n: int, what: str):
        if n < 0 or self.fh.tell() + n > self.size:
            raise ModelError(f"{self.path}: truncated GGUF ({what} runs past the end of the file)")

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        return self.fh.read(n)

    def u32(self, what):
        return struct.unpack("<I", self.read(4, what))[0]

    def u64(self, what):
        return struct.unpack("<Q", self.read(8, what))[0]

    def string(self, what, limit=1 << 20) -> bytes:
        n = self.u64(what)
        if n > limit:
            raise ModelError(f"{self.path}: {what} length {n} is absurd")
        return self.read(n, what)

    def skip(self, n, what):
        self.need(n, what)
        self.fh.seek(n, os.SEEK_CUR)


def _value(c: _Cursor, vtype: int, key: str, depth=0):
    if vtype in _SCALAR:
        raw = c.read(_SCALAR[vtype], f"value of {key}")
        if vtype == 4:
            return struct.unpack("<I", raw)[0]
        if vtype == 10:
            return struct.unpack("<Q", raw)[0]
        return None
    if vtype == 8:
        return c.string(f"string value of {key}").decode("utf-8", "replace")
    if vtype == 9 and depth == 0:
        et = c.u32(f"array type of {key}")
        n = c.u64(f"array length of {key}")
        if et in _SCALAR:
            c.skip(n * _SCALAR[et], f"array {key}")
        elif et == 8:
            if n > c.size // 8:
                raise ModelError(f"{c.path}: array {key} claims {n} strings, more than the file can hold")
            for _ in range(n):
                c.string(f"string in {key}")
        else:
            raise ModelError(f"{c.path}: array {key} has unsupported element type {et}")
        return None
    raise ModelError(f"{c.path}: metadata {key} has unknown value type {vtype}")


def check_file(path) -> None:
    try:
        size = os.path.getsize(path)
        fh = open(path, "rb")
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror}") from None
    with fh:
        c = _Cursor(fh, size, path)
        if c.read(4, "magic") != b"GGUF":
            raise ModelError(f"{path}: not a GGUF file")
        version = c.u32("version")
        if version not in (2, 3):
            raise ModelError(f"{path}: unsupported GGUF version {version} (2 and 3 are supported)")
        n_tensors, n_kv = c.u64("tensor count"), c.u64("metadata count")
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise ModelError(f"{path}: absurd counts ({n_tensors} tensors, {n_kv} metadata entries)")
        align = 32
        for _ in range(n_kv):
            key = c.string("metadata key", 1 << 16).decode("utf-8", "replace")
            shown = key[:60]                     # what messages quote of a key or name: a hostile one is long
            v = _value(c, c.u32(f"type of {shown}"), shown)
            if key == "general.alignment":
                if not isinstance(v, int) or v == 0 or v & (v - 1) or v > 1 << 16:
                    raise ModelError(f"{path}: general.alignment {v} must be a power of two")
                align = v
        infos = []
        for _ in range(n_tensors):
            name = c.string("tensor name", 1 << 12).decode("utf-8", "replace")[:60]    # only messages use it
            nd = c.u32(f"dims of {name}")
            if not 1 <= nd <= MAX_DIMS:
                raise ModelError(f"{path}: tensor {name} has {nd} dimensions")
            dims = [c.u64(f"dim of {name}") for _ in range(nd)]
            ttype = c.u32(f"type of {name}")
            off = c.u64(f"offset of {name}")
            infos.append((name, dims, ttype, off))
        data_start = -(-fh.tell() // align) * align
        for name, dims, ttype, off in infos:
            if ttype not in GGML_TYPES:
                raise ModelError(f"{path}: tensor {name} has unsupported GGML type {ttype}")
            tname, be, bb = GGML_TYPES[ttype]
            n = 1
            for d in dims:
                if d == 0 or d > size * 8:
                    raise ModelError(f"{path}: tensor {name} has absurd dimension {d}")
                n *= d
            if dims[0] % be:
                raise ModelError(f"{path}: tensor {name} ({tname}) row of {dims[0]} is not a multiple of {be}")
            nbytes = n // be * bb
            if off % align or data_start + off + nbytes > size:
                raise ModelError(f"{path}: tensor {name} data [{off}, +{nbytes}) lies outside the file")
