"""Errors the CLI reports as one line and a non-zero exit (never a traceback)."""


class FlightLLMError(Exception):
    """Base of every error a user can cause: bad files, bad arguments, device faults."""

    exit_code = 2

    def __str__(self) -> str:
        # one line, whatever a hostile file put into the names the message quotes (`fuzz` checks it)
        s = super().__str__()
        return s if s.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


class ModelError(FlightLLMError):
    """A model file that is malformed, hostile or unsupported."""


class CompileError(FlightLLMError):
    """A model or request the compiler cannot map onto the board."""


class ISAError(FlightLLMError):
    """A malformed instruction stream."""


class DeviceError(FlightLLMError):
    """The device (simulated or real) stopped with an error code."""

    def __init__(self, message: str, code: int = 0, pc: int = -1):
        super().__init__(message)
        self.code = code
        self.pc = pc
