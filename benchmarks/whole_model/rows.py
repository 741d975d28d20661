"""The rows of the whole-model tables: how attention is switched, and which rows must equal the baseline."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.whole_model.family import Family


@dataclasses.dataclass(frozen=True)
class ConfigSpec:
    """One row of the tables: how attention is switched, and whether its output must equal the reference's."""

    name: str
    summary: str
    attn: str | None = None
    variant: str | None = None
    exact: bool = False
    families: tuple[str, ...] = ("llama", "whisper", "vit")


CONFIGS: dict[str, ConfigSpec] = {
    spec.name: spec
    for spec in (
        ConfigSpec("hf-sdpa", "transformers, sdpa (baseline)", attn="sdpa", exact=True),
        ConfigSpec("hf-flex", "transformers, flex_attention", attn="flex_attention", exact=True),
        ConfigSpec("hf-sdpa-sliding", "transformers, Mistral-style sliding_window (= sliding's window) under sdpa, dense mask",
                   attn="sdpa", exact=True, families=("llama",)),
        ConfigSpec("flash", "ours: exact, fused kernels", variant="flash", exact=True),
        ConfigSpec("sliding", "ours: sliding window (exact below the window)", variant="sliding", exact=True),
        ConfigSpec("sliding-2d", "ours: 2-D neighbourhood over the patch grid", variant="sliding",
                   families=("vit",)),
        ConfigSpec("sparse", "ours: block-sparse (local + global + random blocks)", variant="sparse"),
        ConfigSpec("lowrank", "ours: Linformer", variant="lowrank", families=("whisper", "vit")),
        ConfigSpec("nystrom", "ours: Nystromformer", variant="nystrom", families=("whisper", "vit")),
        ConfigSpec("performer", "ours: Performer (FAVOR+)", variant="performer"),
        ConfigSpec("linear", "ours: Hedgehog linear attention", variant="linear"),
        ConfigSpec("lsh", "ours: LSH buckets (Reformer), 1 round, chunks of 64", variant="lsh"),
        ConfigSpec("axial", "ours: axial attention over the patch grid (rows, then columns)", variant="axial",
                   families=("vit",)),
    )
}
BASELINE = "hf-sdpa"
OPT_IN = {"sliding-2d", "lsh", "axial"}
"""Rows that run only when named in --variants."""
GENERATION_CONFIGS = ("hf-sdpa", "hf-sdpa-sliding", "sliding", "flash")
DECODE_REFERENCE = {"sliding": "hf-sdpa-sliding", "flash": "hf-sdpa"}
"""Generation rows checked by teacher-forced decoding, and the row each must reproduce."""
FUSED = {"flash", "sliding", "sparse"}
FIRST_RUN_S = {"hf-flex": 60.0, **{name: 20.0 for name in FUSED}}
"""Time a row's first length may take before anything is known of it (compiling, autotuning); default 5 s.
A row is not started with less than that left of the budget."""


def variant_options(name: str, family: Family) -> dict[str, Any]:
    """The patch_model options of our row ``name`` on ``family``."""
    tiny = family.tiny
    return {
        "flash": {},
        "sliding": {"window": family.window},
        "sliding-2d": {"window": 2 if tiny else 8, "neighbourhood": "2d"},
        "sparse": {"block_size": 16 if tiny else 128, "local_blocks": 2 if tiny else 8, "global_blocks": 1,
                   "random_blocks": 1 if tiny else 2},
        "lowrank": {"rank": 8 if tiny else 256},
        "nystrom": {"num_landmarks": 8 if tiny else 64},
        "performer": {"num_features": 16 if tiny else 256},
        "linear": {},
        "lsh": {"num_hashes": 1, "bucket_size": 4 if tiny else 64},
        "axial": {},
    }[name]
