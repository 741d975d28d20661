"""What a run records about where and with what it ran: the device, the versions, the date, the command."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name; on the CPU its architecture and core count (what CPU timings depend on)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _transformers() -> str:
    import transformers

    return transformers.__version__


def _triton() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


VERSIONS: dict[str, Callable[[], object]] = {
    "torch": lambda: torch.__version__,
    "transformers": _transformers,
    "triton": _triton,
    "cuda": lambda: torch.version.cuda,
    "cudnn": lambda: torch.backends.cudnn.version(),
    "python": platform.python_version,
}
"""The versions a run can record, by the key it records each under."""


def versions(*names: str) -> dict[str, object]:
    """The versions ``names`` (keys of `VERSIONS`), in that order; None for one not installed."""
    return {name: VERSIONS[name]() for name in names}


def timestamp() -> str:
    """The run's date, as runs are named when merged: sortable, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


def command_line(script: str, argv: list[str]) -> str:
    """How the run was started, as one would type it again: ``python benchmarks/SCRIPT ARGS``."""
    return " ".join(["python", f"benchmarks/{script}", *argv])
