"""Relaunching a compiled Triton kernel without Triton's per-call binding of its arguments.

Each ``kernel[grid](*args, **meta)`` call runs Triton's JIT entry: it binds the arguments (about fifty for
our attention kernels) to the signature, specialises each one (type, divisibility by 16, equality to 1,
pointer alignment), turns that and the compile options into a cache key, looks the compiled kernel up,
checks the globals it read and builds the launch metadata, before the launcher runs. In eager mode on the
H200's host that is about a third of the host time of one of our attention calls.

`Relauncher` pays it once per distinct call. It keeps the compiled kernel Triton returned under a key
holding everything that specialisation reads and more: each scalar argument's specialisation (its type,
its divisibility by 16, its equality to 1, computed by Triton's own function where the release has it,
else the exact value), each tensor's dtype and 16-byte alignment, the keyword arguments (constexprs and
compile options), the device and Triton's debug flag. A later call with the same key goes straight to the
compiled kernel's launcher, with the argument list Triton itself passes it (every parameter in signature
order, constexprs included). So a decoding step, whose key count and cache strides change at every step,
relaunches as long as they stay in the same class.

The call goes through Triton unchanged where that shortcut is not known to hold: the interpreter (which
compiles nothing), a Triton release whose launch path was not checked against this one (before 3.6),
launch hooks installed (profilers such as Proton read the launch metadata), or a parameter left to its
default.

A caller that makes the same call again and again with new tensors in a few places (the layers of a
forward: same shapes, same strides, same mask) can go one step further: `Relauncher.bind` returns a
`BoundLaunch` of a call already made, which launches its compiled kernel with the other arguments as they
were, checking only what the new tensors can change (dtype and 16-byte alignment) and what the process
can (device, stream, debug flag, hooks). That skips the key of every argument (about twenty microseconds
of host time a call on a 2-core development machine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton

from .checks import interpreting

CHECKED_SINCE = (3, 6)
"""The first Triton release whose launch path this module was checked against (3.6 and 3.9 read)."""

Grid = tuple[int, ...] | Callable[[dict], tuple[int, ...]]


def _release(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def available() -> bool:
    """Whether relaunching is used in this process (a compiling Triton, 3.6 or later)."""
    return not interpreting() and _release(triton.__version__) >= CHECKED_SINCE


def _hooks_active() -> bool:
    """Whether launch hooks are installed (then every launch goes through Triton, which feeds them)."""
    runtime = triton.knobs.runtime
    for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return True
    return False


def _current_device() -> int:
    from triton.runtime import driver

    return driver.active.get_current_device()


def _current_stream(device: int) -> int:
    from triton.runtime import driver

    return driver.active.get_current_stream(device)


def _scalar_specialiser() -> Callable[[Any], Any] | None:
    """Triton's own specialisation of a scalar argument (what its cache key holds for it), or None where
    this release does not expose it or the CUDA backend specialises integers its own way (then keys hold
    exact values)."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
        from triton.backends.nvidia.compiler import CUDABackend
    except ImportError:
        return None
    if CUDABackend.get_int_specialization is not BaseBackend.get_int_specialization:
        return None

    def specialise(value: Any) -> Any:
        return native_specialize_impl(BaseBackend, value, False, True, True)

    try:  # what the keys rely on: 2 and 17 alike; 1, 2, 16 and 2**32 (equality to 1, divisibility, width) not
        one, two, sixteen, seventeen, wide = (specialise(value) for value in (1, 2, 16, 17, 2**32))
    except Exception:  # noqa: BLE001 (a release whose function takes other arguments)
        return None
    return specialise if two == seventeen and len({one, two, sixteen, wide}) == 4 else None


_SPECIALISE = _scalar_specialiser()


def _launch_size(grid: Grid, kwargs: dict) -> tuple[int, int, int]:
    """The three grid dimensions a compiled kernel's launcher takes (the missing ones 1)."""
    size = tuple(grid(kwargs) if callable(grid) else grid)
    return (*size, 1, 1)[:3]


class Relauncher:
    """Launches of one ``@triton.jit`` function, relaunching compiled kernels where the key was seen."""

    def __init__(self, fn: Any, max_entries: int = 256) -> None:
        self.fn = fn
        self.max_entries = max_entries
        self._compiled: dict[tuple, tuple[Any, tuple]] = {}
        self._constexpr_positions = frozenset(  # (the interpreter's functions have no params: never relaunched)
            position for position, param in enumerate(getattr(fn, "params", ())) if getattr(param, "is_constexpr", False))

    def __call__(self, grid: Grid, args: tuple, kwargs: dict, kwargs_key: tuple | None = None) -> None:
        """Run ``fn[grid](*args, **kwargs)``. ``kwargs_key``, when given, must be a hashable form of
        ``kwargs`` (callers that already hold one save building it)."""
        if not available() or _hooks_active():
            self.fn[grid](*args, **kwargs)
            return
        device = _current_device()
        key = self._key(device, args, kwargs, kwargs_key)
        entry = self._compiled.get(key)
        if entry is None:
            kernel = self.fn.run(*args, grid=grid, warmup=False, **kwargs)
            self._remember(key, kernel, args, kwargs)
            return
        kernel, constants = entry
        kernel.run(*_launch_size(grid, kwargs), _current_stream(device), kernel.function, kernel.packed_metadata,
                   None, None, None, *args, *constants)

    def bind(self, grid: Grid, args: tuple, kwargs: dict, kwargs_key: tuple | None,
             varying: tuple[int, ...]) -> BoundLaunch | None:
        """The call ``(grid, args, kwargs)``, made before, as a `BoundLaunch` whose tensors at positions
        ``varying`` of ``args`` are given anew at each launch; None where relaunching is off or the call
        was not made (or not kept)."""
        if not available() or _hooks_active():
            return None
        device = _current_device()
        entry = self._compiled.get(self._key(device, args, kwargs, kwargs_key))
        if entry is None:
            return None
        kernel, constants = entry
        return BoundLaunch(kernel, constants, _launch_size(grid, kwargs), device, triton.knobs.runtime.debug, args,
                           varying)

    def _key(self, device: int, args: tuple, kwargs: dict, kwargs_key: tuple | None) -> tuple:
        """Everything Triton's choice of a compiled kernel reads of a call (see the module docstring)."""
        return (
            device,
            triton.knobs.runtime.debug,
            tuple(kwargs.items()) if kwargs_key is None else kwargs_key,
            *[self._argument_key(a, position) for position, a in enumerate(args)],
        )

    def _argument_key(self, value: Any, position: int) -> Any:
        """What Triton's specialisation reads of one positional argument (a constexpr: its value)."""
        if isinstance(value, torch.Tensor):
            return value.dtype, value.data_ptr() % 16 == 0
        if _SPECIALISE is None or type(value) not in (int, float) or position in self._constexpr_positions:
            return value
        return _SPECIALISE(value)

    def _remember(self, key: tuple, kernel: Any, args: tuple, kwargs: dict) -> None:
        """Keep the kernel Triton launched with the parameters that follow ``args`` (all given by name)."""
        names = [param.name for param in self.fn.params]
        rest = names[len(args):]
        if kernel is None or any(name not in kwargs for name in rest):
            return
        if not all(hasattr(kernel, attr) for attr in ("run", "function", "packed_metadata")):
            return
        if len(self._compiled) >= self.max_entries:
            self._compiled.pop(next(iter(self._compiled)))
        self._compiled[key] = (kernel, tuple(kwargs[name] for name in rest))

    def __len__(self) -> int:
        return len(self._compiled)


class BoundLaunch:
    """One compiled kernel's launch with every argument fixed but the tensors at positions ``varying``
    (`Relauncher.bind`). Calling it with new tensors for those positions launches the kernel and returns
    True, or launches nothing and returns False where a new tensor's dtype or 16-byte alignment differs
    from the bound one's, or the device, Triton's debug flag or launch hooks changed: then the caller
    takes its usual path, which compiles or relaunches what that call needs."""

    def __init__(self, kernel: Any, constants: tuple, size: tuple[int, int, int], device: int, debug: bool,
                 args: tuple, varying: tuple[int, ...]) -> None:
        self.kernel = kernel
        self.constants = constants
        self.size = size
        self.device = device
        self.debug = debug
        # No tensor of the call it was bound from is kept: a layer's q, k, v and o would outlive the layer.
        self.args = [None if position in varying else arg for position, arg in enumerate(args)]
        self.varying = varying
        self.classes = tuple((args[position].dtype, args[position].data_ptr() % 16 == 0) for position in varying)

    def __call__(self, tensors: tuple[torch.Tensor, ...]) -> bool:
        for tensor, (dtype, aligned) in zip(tensors, self.classes, strict=True):
            if tensor.dtype != dtype or (tensor.data_ptr() % 16 == 0) != aligned:
                return False
        if triton.knobs.runtime.debug != self.debug or _hooks_active() or _current_device() != self.device:
            return False
        args = self.args.copy()
        for position, tensor in zip(self.varying, tensors, strict=True):
            args[position] = tensor
        kernel = self.kernel
        kernel.run(*self.size, _current_stream(self.device), kernel.function, kernel.packed_metadata, None, None,
                   None, *args, *self.constants)
        return True
