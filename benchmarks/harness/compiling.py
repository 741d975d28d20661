"""Compiling before timing: kernels compiled in parallel child processes, and dynamo's recompile limits.

On a fresh machine most of a benchmark's time goes to compiling Triton kernels (and autotuning them) and
FlexAttention graphs. Child processes that run each kind of kernel once fill the on-disk caches in parallel,
so that the run that times finds them compiled.
"""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import time


def warm_in_children(commands: dict[str, list[str]], timeout_s: float) -> None:
    """Run every command (name -> argv) at once in a child process; print how each ended."""
    def one(name: str) -> str:
        start = time.time()
        try:
            done = subprocess.run(commands[name], capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return f"{name}: timed out after {timeout_s:.0f}s"
        tail = done.stderr.strip().splitlines()[-1:] if done.returncode else []
        return f"{name}: rc={done.returncode} {time.time() - start:.0f}s {' '.join(tail)[:200]}"

    with cf.ThreadPoolExecutor(max(1, len(commands))) as pool:
        for message in pool.map(one, commands):
            print("  warm", message, flush=True)


def allow_recompiles(limit: int = 256) -> None:
    """Raise dynamo's recompile limits to at least ``limit``. FlexAttention is recompiled per shape, mask and
    grad mode; past the limits dynamo silently runs it uncompiled (dense scores), and a row would time
    something other than what it names."""
    import torch._dynamo

    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(limit, getattr(torch._dynamo.config, knob)))
