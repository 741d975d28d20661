"""A window band as custom-op arguments: a torch.library op takes no ``int | None``, so each side without a
bound travels as `NO_BOUND`. One encoding for every op that takes a window (the kernels' ops, the library
backends' ops)."""

from __future__ import annotations

NO_BOUND = -1
"""A window side without a bound, in the custom ops' int arguments (an op takes no ``int | None``)."""


def window_bounds(left: int | None, right: int | None) -> tuple[int, int]:
    """A window's sides as the ops' int arguments (None: `NO_BOUND`). A negative side raises `ValueError`:
    encoded, it could read as no bound."""
    for name, side in (("window_left", left), ("window_right", right)):
        if side is not None and int(side) < 0:
            raise ValueError(f"{name} must be None or an int >= 0, got {side!r}")
    return (NO_BOUND if left is None else int(left)), (NO_BOUND if right is None else int(right))


def window_sides(left: int, right: int) -> tuple[int | None, int | None]:
    """The window back from the ops' int arguments (`window_bounds`)."""
    return (None if left == NO_BOUND else left), (None if right == NO_BOUND else right)
