"""The on-disk cache: compiled model artifacts, Verilator builds, generated Verilog and resource estimates.

Everything lives under ``$FLIGHTLLM_CACHE`` (default ``~/.cache/flightllm``). Entries are keyed by a hash of
what they are made from, so every edit of the hardware, the compiler or a board file makes new ones; the old ones
are never read again. Artifacts (compiler/compile.py), Verilator builds (sim/rtl_device.py) and generated Verilog
(hw/flow) therefore keep only the ``keep`` entries of a *group* (one model on one board, one board's build) used
most recently (``touch`` on every hit) and remove the rest when they store a new one: a Verilator build of the sim
board was ~200 MB with its objects, an artifact is 100-300 MB, and without pruning a developer's cache here grew
to 29 GB. Estimates (a few KB each, and the per-module synthesis results they reuse) are kept. ``FLIGHTLLM_CACHE_KEEP``
overrides ``keep`` (0: keep every entry). Entries are written under ``.tmp<pid>`` names and renamed when complete;
one whose process died (Ctrl-C, a kill) is removed at the group's next prune.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

KEEP = 3          # entries per group: a few branches or contexts side by side


def root() -> Path:
    return Path(os.environ.get("FLIGHTLLM_CACHE", Path.home() / ".cache" / "flightllm"))


def touch(p: Path) -> None:
    """Mark an entry used now (its mtime orders the pruning); a read-only cache is left as it is."""
    try:
        os.utime(p)
    except OSError:
        pass


def keep_count(default: int = KEEP) -> int:
    v = os.environ.get("FLIGHTLLM_CACHE_KEEP", "")
    try:
        return max(0, int(v)) if v.strip() else default
    except ValueError:
        return default


def _in_group(name: str, group: str) -> bool:
    """``name`` is ``group`` + a hex key (+ an extension): ``sim-<key>`` is in group ``sim-``, ``sim-2ch-<key>``
    is not; in-progress ``.tmp<pid>`` entries are in none."""
    if not name.startswith(group) or ".tmp" in name:
        return False
    key = name[len(group):].split(".")[0]
    return bool(key) and all(c in "0123456789abcdef" for c in key)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                          # someone else's process: alive
        pass
    return True


def _stale(name: str, group: str) -> bool:
    """An in-progress entry of ``group`` (``<group><key>[.ext].tmp<pid>``) whose process is gone: what a build
    or save interrupted by Ctrl-C or a kill leaves (a Verilator build's objects are ~200 MB)."""
    base, sep, pid = name.rpartition(".tmp")
    return bool(sep) and pid.isdigit() and _in_group(base, group) and not _alive(int(pid))


def prune(new: Path, group: str, keep: int | None = None) -> list[Path]:
    """Remove the entries of ``group`` beside ``new`` (files or folders named ``group`` + key), all but the
    ``keep`` used most recently, ``new`` always kept, and the group's in-progress entries whose process has died.
    Returns what was removed. Errors (a concurrent prune, a read-only cache) are ignored: pruning only saves
    space."""
    keep = keep_count() if keep is None else keep
    try:
        names = [p for p in new.parent.iterdir() if p.name != new.name]
        stale = [p for p in names if _stale(p.name, group)]
        peers = [p for p in names if _in_group(p.name, group)] if keep > 0 else []
        peers.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []
    gone = []
    for p in stale + peers[keep - 1:]:
        try:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            gone.append(p)
        except OSError:
            pass
    return gone
