"""The compiled artifact: a device memory image plus everything the runtime needs to drive it.

File layout: 8-byte magic, u32 format version, u64 header length, UTF-8 JSON header, zero padding to 64 bytes,
then the image (initial contents of device memory from address 0). The header records the image's SHA-256,
checked on load, so a corrupt or tampered file never reaches a device.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flightllm.errors import CompileError
from flightllm.compiler.memmap import MemoryMap

MAGIC = b"FLLMART\0"
VERSION = 2          # 2: the memory map carries execute permission (region registers)
MAX_HEADER = 64 << 20


def is_artifact(path) -> bool:
    """``path`` names a file that starts as an artifact does (what ``flightllm compile`` writes)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


@dataclass
class Artifact:
    header: dict
    image: np.ndarray          # uint8, initial device memory [0, len)

    @property
    def memmap(self) -> MemoryMap:
        return MemoryMap.from_dict(self.header["memmap"])

    @property
    def mem_size(self) -> int:
        return int(self.header["mem_size"])

    @property
    def split_stride(self) -> int:
        """SPLIT_STRIDE for every run: bytes between the weight channels' sections (0: no split matrices; what
        artifacts from before weight channels hold)."""
        v = self.header.get("split_stride", 0)
        if not isinstance(v, int) or isinstance(v, bool):
            raise CompileError(f"artifact: split stride {v!r} is not an integer")
        return v

    def program(self, name: str) -> dict:
        return self.header["programs"][name]

    def program_words(self, name: str) -> np.ndarray:
        p = self.program(name)
        return self.image[p["addr"]: p["addr"] + 4 * p["words"]].view("<u4")

    def save(self, path) -> None:
        h = dict(self.header)
        h["image_sha256"] = hashlib.sha256(self.image.tobytes()).hexdigest()
        h["image_size"] = int(self.image.size)
        hb = json.dumps(h).encode()
        pad = (-(len(MAGIC) + 12 + len(hb))) % 64
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")     # per process: concurrent saves of one key
        try:
            with open(tmp, "wb") as f:
                f.write(MAGIC + struct.pack("<IQ", VERSION, len(hb)) + hb + b"\0" * pad)
                f.write(self.image.tobytes())
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path) -> "Artifact":
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CompileError(f"cannot read artifact {path}: {e.strerror}") from None
        if len(data) < 20 or data[:8] != MAGIC:
            raise CompileError(f"{path}: not a flightllm artifact")
        ver, hlen = struct.unpack("<IQ", data[8:20])
        if ver != VERSION:
            raise CompileError(f"{path}: artifact format {ver}, this flightllm reads {VERSION}; recompile")
        if hlen > MAX_HEADER or 20 + hlen > len(data):
            raise CompileError(f"{path}: corrupt artifact header")
        try:
            h = json.loads(data[20:20 + hlen])
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CompileError(f"{path}: corrupt artifact header") from None
        off = 20 + hlen + (-(20 + hlen)) % 64
        img = np.frombuffer(data, dtype=np.uint8, offset=off)
        if img.size != h.get("image_size") or hashlib.sha256(img).hexdigest() != h.get("image_sha256"):
            raise CompileError(f"{path}: image checksum mismatch (corrupt artifact)")
        return cls(h, img.copy())
