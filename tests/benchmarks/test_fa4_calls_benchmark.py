"""benchmarks/fa4_calls.py: where FlashAttention-4 cannot run, the script stops before measuring and says
why and how to install it (it needs a Hopper GPU with the fa4 and cudnn extras)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hf_efficient_attn.backends import fa4

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(fa4.available(), reason="FlashAttention-4 runs here: the script measures instead")
def test_without_flashattention_4_it_says_why_and_writes_nothing(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fa4_calls.py"), "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert fa4.unavailable_reason() in run.stderr
    assert not list(tmp_path.iterdir())
