"""What pynq sees, and loading a bitstream / xclbin through it. Every failure is one FlightLLMError line."""
from __future__ import annotations

from pathlib import Path

from flightllm.errors import FlightLLMError


class NoDevice(FlightLLMError):
    pass


def _pynq():
    try:
        import pynq
    except Exception as e:       # pynq missing or failing at import (no XRT, not a board)
        raise NoDevice(f"pynq is not usable here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    return pynq


def devices() -> list[dict]:
    """The FPGA devices pynq finds (Alveo cards through XRT, or the Zynq/Kria PL on a PYNQ image)."""
    import warnings

    pynq = _pynq()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")    # "No devices found, is the XRT environment sourced?"
            devs = list(pynq.Device.devices)
    except Exception as e:       # pynq raises RuntimeError("No Devices Found") and others without a device
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NoDevice(f"no FPGA devices found ({msg})") from None
    if not devs:
        raise NoDevice("no FPGA devices found")
    return [{"index": i, "name": getattr(d, "name", str(d)), "type": type(d).__name__} for i, d in enumerate(devs)]


def flash(board, path: str | Path, device_index: int = 0) -> dict:
    """Load ``path`` (.bit with its .hwh beside it, or .xclbin) onto device ``device_index`` via pynq.Overlay."""
    p = Path(path)
    if not p.is_file():
        raise FlightLLMError(f"no such file: {p}")
    want = ".xclbin" if board.family == "alveo" else ".pdi" if board.family == "versal" else ".bit"
    if p.suffix != want:
        raise FlightLLMError(f"board '{board.name}' loads a {want} file, not '{p.name}'")
    if want == ".bit" and not p.with_suffix(".hwh").is_file():
        raise FlightLLMError(f"{p.with_suffix('.hwh')} is missing: pynq.Overlay needs the .hwh next to the .bit")
    devs = devices()
    if device_index >= len(devs):
        raise NoDevice(f"device {device_index} does not exist ({len(devs)} found)")
    pynq = _pynq()
    try:
        ol = pynq.Overlay(str(p), device=pynq.Device.devices[device_index])
    except Exception as e:
        raise FlightLLMError(f"loading {p.name} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return {"file": str(p), "device": devs[device_index]["name"], "ip": sorted(getattr(ol, "ip_dict", {}))}
