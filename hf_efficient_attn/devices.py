"""The device a command runs on: a ``--device`` name, checked against what this machine and torch build offer.

Moving a model to a device torch cannot use fails deep inside torch (an ``AssertionError`` from a CPU
build asked for CUDA, a ``RuntimeError`` for a GPU index past the last); `resolve_device` asks first,
with one empty tensor, so that the commands can say which devices there are instead.
"""

from __future__ import annotations

import torch


class DeviceUnavailableError(ValueError):
    """A device was asked for that this machine or this build of torch cannot use."""


def available_devices() -> list[str]:
    """The devices torch can use here: ``cpu``, each CUDA GPU (``cuda:0``, ...), and ``mps`` on Apple GPUs."""
    devices = ["cpu"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str | None) -> torch.device:
    """The device ``name`` (None: ``cuda`` if a GPU is available, else ``cpu``), checked to be usable.

    Raises `DeviceUnavailableError` for a name torch does not know, or a device it cannot allocate on,
    naming the devices that are available.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = ", ".join(available_devices())
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceUnavailableError(
            f"--device {name!r} is not a device name; give one of the devices available here: {available}."
        ) from None
    if device.type == "cuda" and not torch.backends.cuda.is_built():
        raise DeviceUnavailableError(
            f"--device {name!r}: this build of torch ({torch.__version__}) has no CUDA support. Use one of the "
            f"devices available here ({available}), or install a CUDA build of torch."
        )
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        reason = str(error).strip().split(". ")[0] or type(error).__name__  # torch's first sentence says it
        raise DeviceUnavailableError(
            f"--device {name!r} cannot be used here ({reason}); use one of the devices available here: {available}."
        ) from None
    return device
