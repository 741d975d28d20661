"""Kernels compiled before the run: one child process per (model, row) whose kernels compile (our fused rows
and FlexAttention) runs a one-layer model of the real shapes, filling the on-disk caches in parallel."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.harness.compiling import allow_recompiles, warm_in_children
from benchmarks.harness.timing import synchronize
from benchmarks.whole_model import FAMILIES
from benchmarks.whole_model.checks import decode_hidden
from benchmarks.whole_model.cli import DTYPES
from benchmarks.whole_model.family import Family
from benchmarks.whole_model.rows import CONFIGS, FUSED, GENERATION_CONFIGS
from benchmarks.whole_model.switching import configured, training


def warm_specs(families: list[Family], chosen: list[str]) -> list[str]:
    """``family:row`` for each (family, row) whose kernels compile: our fused rows and FlexAttention."""
    return [f"{family.name}:{name}" for family in families for name in chosen
            if (name in FUSED or name == "hf-flex") and family.name in CONFIGS[name].families]


def warm_all(script: Path, specs: list[str], argv: list[str], timeout_s: float) -> None:
    """Run ``script`` (the entry point) with ``argv`` and ``--warm-child SPEC`` for every spec at once."""
    warm_in_children({spec: [sys.executable, str(script), *argv, "--warm-child", spec] for spec in specs},
                     timeout_s)


def warm_child(args: argparse.Namespace, spec_text: str) -> None:
    """One (family, row): a one-layer model of the real shapes, prefill and train at the check length and the
    first length (the kernels' specialisations), plus a few decode steps on Llama."""
    family_name, name = spec_text.split(":")
    allow_recompiles()
    family = FAMILIES[family_name](args, torch.device(args.device), DTYPES[args.dtype], layers=1)
    spec = CONFIGS[name]
    for length in (family.check_length, family.lengths[0]):
        model = family.build(length)
        inputs = family.inputs(model, length)
        with configured(family, model, spec) as target:
            with torch.no_grad():
                family.output(target, inputs)
            with training(target, checkpointing=False):
                family.loss(target, inputs).backward()
    if family_name == "llama" and name in GENERATION_CONFIGS:
        model = family.build(0)
        ids = family.inputs(model, family.window + 72)["input_ids"]
        with torch.no_grad(), configured(family, model, spec) as target:
            decode_hidden(target, ids, family.window + 64)
    synchronize(family.device)
