r"""Whole-model benchmark: transformers' attention backends against this library's variants.

    python benchmarks/end_to_end.py --out benchmarks/results/e2e       # the README table (one H100, < 8 min)
    python benchmarks/end_to_end.py --out /tmp/e2e --device cpu --tiny   # the whole path on tiny models

Writes end_to_end.json, end_to_end.md and PNG plots (time and peak memory against length, log-log, per
model; the generation curves) into --out. The JSON and Markdown are rewritten after every measurement,
so a run that is stopped keeps what it measured; without matplotlib the plots are left out (and it says so).

Models (bf16 on CUDA, fp32 on the CPU, where bf16 matmuls are ~100x slower without native support; see
--dtype. Random weights built directly on the device, no download; weights drawn with std
sqrt(3 / hidden) so attention is peaked as in trained models, see `init_std`):
  llama    Llama-3.2-1B shapes: hidden 2048, 16 layers, 32 query / 8 key-value heads of 64, MLP 8192,
           vocab 128256 (tied). --llama-path loads a local checkpoint with real weights instead.
  whisper  Whisper-large-v3's encoder (1280 wide, 32 layers, 20 heads of 64) built with
           max_source_positions = each length (1500 is the model's own); the input is 2 x length mel frames.
  vit      ViT-B/16 (768 wide, 12 layers, 12 heads of 64) at 512..4096 px: 1 + (size/16)^2 tokens.

Configurations (rows):
  hf-sdpa          transformers, attn_implementation="sdpa": the baseline.
  hf-flex          transformers, attn_implementation="flex_attention" (compiled by transformers; compiling
                   happens in untimed warm-up runs).
  hf-sdpa-sliding  Llama only: the same weights as MistralForCausalLM with config.sliding_window = --window,
                   under sdpa (transformers builds a dense N x N mask for it).
  flash, sliding, sparse, lowrank, nystrom, performer, linear: patch_model(model, variant, **options) with
                   the options of `variant_options` (sliding: --window on Llama, --encoder-window on the
                   encoders, 1-D; lowrank and nystrom run on the encoders only). sliding-2d (ViT, the 2-D
                   neighbourhood on its own kernel) runs only when named in --variants (the saved tables
                   predate that kernel; benchmarks/neighbourhood.py times it per call).

Measured per configuration and length:
  prefill   one forward under no_grad. Llama: the base model (model.model), without the LM head, whose
            N x vocab logits would dominate at long lengths.
  train     forward + backward (no optimizer step), loss on the last 512 positions (Llama: LM head and
            cross-entropy on those only), gradient checkpointing on (--no-checkpointing turns it off);
            lengths up to --train-max-tokens.
  peak      torch.cuda.max_memory_allocated during the run, weights included (reset before each run;
            on the CPU: growth of the resident set, coarse).
  generate  Llama, greedy, batch 1: a --gen-prompt token prompt (logits of its last token only), then
            --gen-new tokens one at a time, with transformers' DynamicCache(config=model.config) (a
            sliding-window cache for hf-sdpa-sliding; this library swaps in its bounded cache for sliding).
            Tokens/s, cache bytes (the cached key/value tensors) and peak memory over each stretch.
Times: the median of up to --repeats runs after one untimed warm-up run (compiling, autotuning), each run
between torch.cuda.synchronize calls; runs of a second or more are timed once. An out-of-memory run is
recorded as OOM (and longer lengths of that row are not tried); rows expected to take longer than
--max-run-s a run (extrapolated from shorter lengths) are skipped and say so.

Checks, before anything is timed: each configuration's output on a short input is compared with an fp32
run of its reference: hf-sdpa at --check-tokens (below every window, so sliding is exact there); on
Llama also sliding against hf-sdpa-sliding beyond the window, and for generation teacher-forced decode
steps after a prompt longer than the window. Exact configurations must be no further from the fp32
output than TOLERANCE x the reference's own distance from it in the run's dtype (+ 1e-3); one that fails is not timed
(--time-failed times it anyway). Approximate ones report their difference. Calls that fell back from the
fused kernels to the reference path are reported.

Budget: the default run is planned for about 7 minutes on a fresh H100 (an estimate, not yet measured):
~1.5 min (at most --warm-timeout) compiling kernels (Triton and FlexAttention, in parallel child processes
that fill the on-disk caches before the main run), ~40 s of checks, then in priority order Llama prefill
(~70 s), generation (~60 s), Llama training (~55 s), Whisper and ViT prefill (~40 s), their training
(~40 s). --time-budget (default 400 s from the start) stops starting new measurements: what was not run
says "skipped (time budget)", a row's first length is only started with FIRST_RUN_S left (compiling),
and the generation loop stops at its next point, so the run ends within about 8 minutes, outputs written.

Partial runs: one GPU call is limited to 10 minutes, so a full table takes several runs, each merged with
the results of the ones before:
    python benchmarks/end_to_end.py --out /tmp/e2e --models llama --modes train \
        --merge benchmarks/results/end_to_end-h100.json
--modes (default prefill,train,generate) picks the measurements; they run in the priority order above,
whatever the order given (--skip-train and --skip-generation take one out). The checks always run: they
decide what is timed. --merge PATH takes an earlier end_to_end.json; an entry is the same measurement in
both runs when these agree: rows model, config, mode and tokens; generation config and prompt; checks
model, config, reference, mode and tokens. The earlier entries this run did not have are kept, each with
"run": the date of its run; so are those that tell more than this run's: a measurement where this run
failed or skipped, a failure (OOM) where it skipped. A redone check always replaces. The JSON, Markdown and
plots are written from the merged results after every measurement; in the Markdown, kept entries carry
a mark (†, ‡, ...) explained under the header, which lists the runs merged. Merging is refused when the
earlier run differs in device, dtype, --tiny, --no-checkpointing, --window, --encoder-window or
--llama-path: its numbers would not compare.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness.compiling import warm_in_children  # noqa: E402
from benchmarks.harness.markdown import mark, merged_runs, run_marks  # noqa: E402
from benchmarks.harness.store import load_comparable, merge_runs  # noqa: E402
from hf_efficient_attn import FusedPathFallbackWarning, patch_model, unpatch_model  # noqa: E402
from hf_efficient_attn.measure import measure  # noqa: E402

STARTED = time.time()
"""The time budget counts from here (after importing torch and this library, ~10 s on a fresh machine)."""
GIB = 2**30
MIB = 2**20
TOLERANCE = 3.0
"""An exact configuration passes when its error vs fp32 is <= TOLERANCE x the reference's (in the run's dtype) + 1e-3."""
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
LOSS_TOKENS = 512
LONG_RUN_S = 1.0
"""Runs at least this long are timed once after the warm-up."""
MODES = ("prefill", "train", "generate")


# ---------------------------------------------------------------------------------------------- rows


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
    )
}
BASELINE = "hf-sdpa"
OPT_IN = {"sliding-2d"}
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
    }[name]


# ---------------------------------------------------------------------------------------------- models


class Family:
    """A model to benchmark: how to build it at a length, feed it, and read an output and a loss from it."""

    name: str
    title: str
    length_flag: str

    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, layers: int | None = None):
        self.args, self.device, self.dtype, self.tiny, self.layers = args, device, dtype, args.tiny, layers
        if self.tiny:
            self.title = f"{type(self).__name__} (tiny shapes)"
        self._model: tuple[int, nn.Module] | None = None

    # sizes
    lengths: list[int]
    check_length: int
    window: int

    def tokens(self, length: int) -> int:
        return length

    def describe(self, length: int) -> str:
        return f"{self.tokens(length)} tokens"

    # the model
    def new_model(self, length: int) -> nn.Module:
        raise NotImplementedError

    def build(self, length: int) -> nn.Module:
        """The baseline model (sdpa, eval) for ``length``, reused while the length does not change it."""
        key = self.model_key(length)
        if self._model is None or self._model[0] != key:
            self.release()
            torch.manual_seed(0)
            with torch.device(self.device):
                model = self.new_model(length)
            self._model = (key, model.eval())
        return self._model[1]

    def model_key(self, length: int) -> int:
        return length

    def release(self) -> None:
        if self._model is not None:
            self._model = None
            free_memory(self.device)

    def model_for(self, spec: ConfigSpec, model: nn.Module) -> nn.Module:
        return model

    def inputs(self, model: nn.Module, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def output(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**inputs).last_hidden_state

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.output(model, inputs)
        return hidden[:, -LOSS_TOKENS:].float().square().mean()


class Llama(Family):
    name, title, length_flag = "llama", "Llama (Llama-3.2-1B shapes)", "--lengths"

    def __init__(self, args, device, dtype, layers=None):
        super().__init__(args, device, dtype, layers)
        self.lengths = args.lengths or ([32, 64, 128] if self.tiny else [2048, 8192, 32768, 131072])
        self.window = args.window or (32 if self.tiny else 4096)
        self.check_length = args.check_tokens or (24 if self.tiny else 1024)
        self.window_check_length = 2 * self.window + self.window // 8
        self._twin: nn.Module | None = None
        if args.llama_path and layers is None:
            self.title = f"Llama ({args.llama_path})"

    def config(self):
        from transformers import AutoConfig, LlamaConfig

        if self.args.llama_path:
            config = AutoConfig.from_pretrained(self.args.llama_path)
        elif self.tiny:
            config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                 max_position_embeddings=4096, tie_word_embeddings=True, initializer_range=init_std(64))
        else:
            config = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                 num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                 max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True,
                                 initializer_range=init_std(2048))
        if self.layers is not None:
            config.num_hidden_layers = self.layers
        return config

    def model_key(self, length: int) -> int:
        return 0  # one model serves every length

    def new_model(self, length: int) -> nn.Module:
        from transformers import AutoModelForCausalLM

        if self.args.llama_path and self.layers is None:
            model = AutoModelForCausalLM.from_pretrained(self.args.llama_path, dtype=self.dtype,
                                                         attn_implementation="sdpa")
            return model.to(self.device)
        return AutoModelForCausalLM.from_config(self.config(), dtype=self.dtype, attn_implementation="sdpa")

    def release(self) -> None:
        self._twin = None  # shares the model's weights: nothing of its own to free
        super().release()

    def model_for(self, spec: ConfigSpec, model: nn.Module) -> nn.Module:
        return self.sliding_twin(model) if spec.name == "hf-sdpa-sliding" else model

    def sliding_twin(self, model: nn.Module) -> nn.Module:
        """The same weights (shared, not copied) as a MistralForCausalLM with ``sliding_window = window``."""
        if self._twin is None:
            from transformers import MistralConfig, MistralForCausalLM

            source = model.config
            fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                      "tie_word_embeddings")
            config = MistralConfig(**{field: getattr(source, field) for field in fields}, sliding_window=self.window)
            with torch.device("meta"):
                twin = MistralForCausalLM(config)
            twin.load_state_dict(model.state_dict(), assign=True)
            twin.model.rotary_emb = model.model.rotary_emb  # same rotary embedding (and its non-persistent buffers)
            left = [name for name, tensor in twin.state_dict(keep_vars=True).items() if tensor.is_meta]
            if left:
                raise RuntimeError(f"Mistral twin: tensors not shared from the Llama model: {left[:4]}")
            twin.set_attn_implementation("sdpa")
            self._twin = twin.eval()
        return self._twin

    def inputs(self, model, length, seed=0):
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)
        return {"input_ids": ids.to(self.device)}

    def output(self, model, inputs):
        return model.model(**inputs, use_cache=False).last_hidden_state

    def loss(self, model, inputs):
        ids = inputs["input_ids"]
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        tail = min(LOSS_TOKENS, ids.shape[1])
        logits = model.lm_head(hidden[:, -tail:-1]).float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, -tail + 1:].reshape(-1))


class Whisper(Family):
    name, title, length_flag = "whisper", "Whisper encoder (large-v3 shapes)", "--whisper-lengths"

    def __init__(self, args, device, dtype, layers=None):
        super().__init__(args, device, dtype, layers)
        self.lengths = args.whisper_lengths or ([16, 32, 64] if self.tiny else [1500, 6000, 24000])
        self.window = args.encoder_window or (24 if self.tiny else 512)
        self.check_length = 12 if self.tiny else 448

    def describe(self, length):
        return f"{length} positions ({2 * length} mel frames)"

    def new_model(self, length):
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if self.tiny:
            shape = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=8)
        else:
            shape = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                         num_mel_bins=128)
        if self.layers is not None:
            shape["encoder_layers"] = self.layers
        config = WhisperConfig(**shape, max_source_positions=length, decoder_layers=1,
                               init_std=init_std(shape["d_model"]))
        return WhisperEncoder._from_config(config, dtype=self.dtype, attn_implementation="sdpa")

    def inputs(self, model, length, seed=0):
        generator = torch.Generator().manual_seed(seed)
        features = torch.randn(1, model.config.num_mel_bins, 2 * length, generator=generator)
        return {"input_features": features.to(self.device, self.dtype)}


class ViT(Family):
    name, title, length_flag = "vit", "ViT-B/16 at high resolution", "--vit-sizes"

    def __init__(self, args, device, dtype, layers=None):
        super().__init__(args, device, dtype, layers)
        self.patch = 4 if self.tiny else 16
        self.lengths = args.vit_sizes or ([16, 32, 64] if self.tiny else [512, 1024, 2048, 4096])
        self.window = args.encoder_window or (24 if self.tiny else 512)
        self.check_length = 12 if self.tiny else 320

    def tokens(self, length):
        return 1 + (length // self.patch) ** 2

    def describe(self, length):
        return f"{length}x{length} px, {self.tokens(length)} tokens"

    def new_model(self, length):
        from transformers import ViTConfig, ViTModel

        if self.tiny:
            shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        else:
            shape = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        if self.layers is not None:
            shape["num_hidden_layers"] = self.layers
        config = ViTConfig(**shape, image_size=length, patch_size=self.patch, initializer_range=init_std(shape["hidden_size"]))
        return ViTModel._from_config(config, dtype=self.dtype, attn_implementation="sdpa", add_pooling_layer=False)

    def inputs(self, model, length, seed=0):
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.randn(1, 3, length, length, generator=generator)
        return {"pixel_values": pixels.to(self.device, self.dtype)}


def init_std(hidden: int) -> float:
    """Weight std giving attention logits of std ~3 after a normalised input, ``std**2 * hidden``: peaked
    attention as in trained models. At transformers' default 0.02 attention is nearly uniform at these widths,
    and every approximation would look exact in the checks."""
    return math.sqrt(3.0 / hidden)


FAMILIES: dict[str, type[Family]] = {"llama": Llama, "whisper": Whisper, "vit": ViT}


# ---------------------------------------------------------------------------------------------- running a row


@contextlib.contextmanager
def configured(family: Family, model: nn.Module, spec: ConfigSpec) -> Iterator[nn.Module]:
    """``model`` switched to row ``spec`` (an attention implementation, a patch or the Mistral twin)."""
    target = family.model_for(spec, model)
    if spec.variant is None:
        target.set_attn_implementation(spec.attn)
        try:
            yield target
        finally:
            target.set_attn_implementation("sdpa")
        return
    patch_model(target, spec.variant, **variant_options(spec.name, family))
    try:
        yield target
    finally:
        unpatch_model(target)


@contextlib.contextmanager
def training(model: nn.Module, checkpointing: bool) -> Iterator[None]:
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        if checkpointing:
            model.gradient_checkpointing_disable()
        model.zero_grad(set_to_none=True)
        model.eval()


@contextlib.contextmanager
def parameters_as(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Run ``model`` with its parameters in ``dtype``; the original tensors (and their sharing) come back after."""
    saved = [(parameter, parameter.data) for parameter in model.parameters()]
    for parameter, data in saved:
        parameter.data = data.to(dtype)
    try:
        yield
    finally:
        for parameter, data in saved:
            parameter.data = data


@contextlib.contextmanager
def fallbacks_recorded(into: set[str]) -> Iterator[None]:
    """Collect this library's fused-path fallback warnings raised inside the block."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FusedPathFallbackWarning)
        try:
            yield
        finally:
            for warning in caught:
                if issubclass(warning.category, FusedPathFallbackWarning):
                    reason = re.search(r"exactly \((.*)\); using", str(warning.message))
                    into.add(reason.group(1) if reason else str(warning.message))


def cast_inputs(inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in inputs.items()}


def free_memory(device: torch.device, collect: bool = True) -> None:
    """Return cached blocks to the device; ``collect`` first breaks reference cycles (slow: ~0.5 s)."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def failure(exc: BaseException) -> str:
    return "OOM" if is_oom(exc) else f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ---------------------------------------------------------------------------------------------- checks


def check_outputs(out: torch.Tensor, ref32: torch.Tensor, ref16: torch.Tensor, exact: bool) -> dict[str, Any]:
    err, floor = rel_err(out, ref32), rel_err(ref16, ref32)
    tolerance = TOLERANCE * floor + 1e-3
    status = ("ok" if err <= tolerance else "FAIL") if exact else "approximate"
    return {"rel_err_vs_fp32": err, "reference_rel_err_vs_fp32": floor, "rel_diff_vs_reference": rel_err(out, ref16),
            "tolerance": tolerance if exact else None, "status": status}


def prefill_checks(family: Family, specs: list[ConfigSpec], fallbacks: dict[str, set[str]]) -> list[dict]:
    """Every row against fp32 hf-sdpa at the check length; on Llama, sliding against hf-sdpa-sliding beyond it."""
    plans = [(spec, BASELINE, family.check_length) for spec in specs]
    if family.name == "llama" and "sliding" in {spec.name for spec in specs}:
        plans.append((CONFIGS["sliding"], "hf-sdpa-sliding", family.window_check_length))
    results, references = [], {}
    for spec, reference, length in plans:
        model = family.build(length)
        row = {"family": family.name, "config": spec.name, "reference": reference, "mode": "prefill",
               "tokens": family.tokens(length), "exact": spec.exact}
        try:
            inputs = family.inputs(model, length, seed=1)
            if (reference, length) not in references:
                references[(reference, length)] = reference_outputs(family, model, CONFIGS[reference], inputs)
            ref32, ref16 = references[(reference, length)]
            with fallbacks_recorded(fallbacks.setdefault(spec.name, set())), torch.no_grad(), \
                    configured(family, model, spec) as target:
                out = family.output(target, inputs)
            row.update(check_outputs(out, ref32, ref16, spec.exact))
        except Exception as exc:  # report and go on
            row["status"] = failure(exc)
        results.append(row)
        print(f"  check {spec.name:16s} vs {reference:16s} @ {row['tokens']:>6}: {format_check(row)}", flush=True)
    return results


def reference_outputs(family: Family, model: nn.Module, spec: ConfigSpec, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of reference row ``spec`` in fp32 and in the run's dtype."""
    with torch.no_grad(), configured(family, model, spec) as target:
        with parameters_as(target, torch.float32):
            ref32 = family.output(target, cast_inputs(inputs, torch.float32))
        ref16 = family.output(target, inputs)
    return ref32, ref16


def format_check(row: dict) -> str:
    if "rel_err_vs_fp32" not in row:
        return row["status"]
    text = f"rel err vs fp32 {row['rel_err_vs_fp32']:.2e} (reference {row['reference_rel_err_vs_fp32']:.2e})"
    return f"{row['status']}: {text}"


def decode_checks(family: Llama, names: list[str], fallbacks: dict[str, set[str]]) -> list[dict]:
    """Teacher-forced decoding after a prompt longer than the window: our rows against their reference."""
    prompt, steps = family.window + family.window // 64 + 8, 8
    model = family.build(prompt)
    ids = family.inputs(model, prompt + steps, seed=2)["input_ids"]
    results, references = [], {}
    for name in names:
        reference = DECODE_REFERENCE[name]
        spec = CONFIGS[name]
        row = {"family": family.name, "config": name, "reference": reference, "mode": "decode",
               "tokens": prompt + steps, "exact": spec.exact}
        try:
            if reference not in references:
                with torch.no_grad(), configured(family, model, CONFIGS[reference]) as target:
                    with parameters_as(target, torch.float32):
                        ref32 = decode_hidden(target, ids, prompt)
                    references[reference] = (ref32, decode_hidden(target, ids, prompt))
            with fallbacks_recorded(fallbacks.setdefault(name, set())), torch.no_grad(), \
                    configured(family, model, spec) as target:
                out = decode_hidden(target, ids, prompt)
            row.update(check_outputs(out, *references[reference], spec.exact))
        except Exception as exc:  # report and go on
            row["status"] = failure(exc)
        results.append(row)
        print(f"  check {name:16s} vs {reference:16s} decode after {prompt}: {format_check(row)}", flush=True)
    return results


def decode_hidden(model: nn.Module, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    """Last hidden states of one-token steps fed ``ids[prompt:]`` after a cached prompt."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model.model(input_ids=ids[:, :prompt], past_key_values=cache, use_cache=True)
    steps = [model.model(input_ids=ids[:, i:i + 1], past_key_values=cache, use_cache=True).last_hidden_state
             for i in range(prompt, ids.shape[1])]
    return torch.cat(steps, dim=1)


# ---------------------------------------------------------------------------------------------- timing


class Budget:
    """The run's clock, and per-row extrapolation from shorter lengths to skip runs that cannot finish."""

    def __init__(self, seconds: float, max_run_s: float, start: float):
        self.start, self.seconds, self.max_run_s = start, seconds, max_run_s
        self.history: dict[tuple, list[tuple[int, float]]] = {}
        self.stopped: dict[tuple, str] = {}

    def left(self) -> float:
        return self.start + self.seconds - time.time()

    def elapsed(self) -> float:
        return time.time() - self.start

    def estimate(self, key: tuple, tokens: int) -> float | None:
        points = sorted(p for p in self.history.get(key, []) if p[0] < tokens)
        if not points:
            return None
        n1, t1 = points[-1]
        power = 2.0
        if len(points) > 1:
            n0, t0 = points[-2]
            power = min(2.0, max(1.0, math.log(max(t1, 1e-9) / max(t0, 1e-9)) / math.log(n1 / n0)))
        return t1 * (tokens / n1) ** power

    def skip_reason(self, key: tuple, tokens: int) -> str | None:
        if key in self.stopped:
            return f"skipped ({self.stopped[key]})"
        estimate = self.estimate(key, tokens)
        if self.left() <= (FIRST_RUN_S.get(key[1], 5.0) if estimate is None else 0):
            return "skipped (time budget)"
        if estimate is not None and estimate > self.max_run_s:
            return f"skipped (est. {estimate:.0f} s a run > --max-run-s)"
        if estimate is not None and 2 * estimate > self.left():
            return "skipped (time budget)"
        return None

    def record(self, key: tuple, tokens: int, seconds: float) -> None:
        self.history.setdefault(key, []).append((tokens, seconds))


def run_once(work: Callable[[], object], device: torch.device) -> tuple[float, int]:
    """Seconds and peak bytes of one run (CUDA: allocator peak, weights included; CPU: resident-set growth)."""
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    with measure(device) as result:
        work()
    return result.seconds, base + result.peak_bytes


def timed(work: Callable[[], object], device: torch.device, repeats: int) -> dict[str, Any]:
    warm_s, _ = run_once(work, device)
    runs = [run_once(work, device) for _ in range(1 if warm_s >= LONG_RUN_S else repeats)]
    seconds = sorted(s for s, _ in runs)
    return {"status": "ok", "ms": round(1e3 * seconds[len(seconds) // 2], 3), "runs_ms": [round(1e3 * s, 3) for s, _ in runs],
            "warmup_ms": round(1e3 * warm_s, 3), "peak_gib": round(max(p for _, p in runs) / GIB, 3)}


def measure_row(family: Family, spec: ConfigSpec, mode: str, length: int, args, budget: Budget,
                fallbacks: dict[str, set[str]]) -> dict[str, Any]:
    tokens = family.tokens(length)
    row = {"family": family.name, "config": spec.name, "mode": mode, "length": length, "tokens": tokens,
           "input": family.describe(length)}
    key = (family.name, spec.name, mode)
    reason = budget.skip_reason(key, tokens)
    if reason:
        row["status"] = reason
        return row
    try:
        model = family.build(length)
        inputs = family.inputs(model, length)
        with fallbacks_recorded(fallbacks.setdefault(spec.name, set())), configured(family, model, spec) as target:
            if mode == "prefill":
                def work():
                    with torch.no_grad():
                        return family.output(target, inputs)
            else:
                def work():
                    family.loss(target, inputs).backward()
                    target.zero_grad(set_to_none=True)
            with training(target, args.checkpointing) if mode == "train" else contextlib.nullcontext():
                row.update(timed(work, family.device, args.repeats))
        budget.record(key, tokens, row["ms"] / 1e3)
    except Exception as exc:  # OOM or an error: record it, stop this row's longer lengths on OOM
        row["status"] = failure(exc)
        if row["status"] == "OOM":
            budget.stopped[key] = f"OOM at {tokens} tokens"
    free_memory(family.device, collect="ms" not in row)
    return row


# ---------------------------------------------------------------------------------------------- generation


def cache_bytes(cache: object) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def generate_row(family: Llama, spec: ConfigSpec, args, budget: Budget, fallbacks: dict[str, set[str]]) -> dict:
    """Prefill a prompt, then greedy one-token steps; tokens/s, cache bytes and peak memory per stretch."""
    from transformers import DynamicCache

    device = family.device
    cuda = device.type == "cuda"
    row: dict[str, Any] = {"config": spec.name, "prompt": args.gen_prompt, "new_tokens": args.gen_new, "points": []}
    if budget.left() <= 0:
        row["status"] = "skipped (time budget)"
        return row
    marks = sorted({max(1, args.gen_new >> shift) for shift in (3, 2, 1, 0)})

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    try:
        model = family.build(args.gen_prompt)
        prompt = family.inputs(model, args.gen_prompt, seed=3)["input_ids"]
        with fallbacks_recorded(fallbacks.setdefault(spec.name, set())), torch.no_grad(), \
                configured(family, model, spec) as target:
            cache = DynamicCache(config=target.config)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            sync()
            start = time.perf_counter()
            out = target(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1:].argmax(-1)
            sync()
            row["prefill_ms"] = round(1e3 * (time.perf_counter() - start), 1)
            row["after_prefill"] = {"cache_mib": round(cache_bytes(cache) / MIB, 3),
                                    "peak_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 3) if cuda else None}
            del out
            done, last = 0, time.perf_counter()
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            for step in range(1, args.gen_new + 1):
                token = target(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
                if step in marks:
                    sync()
                    now = time.perf_counter()
                    row["points"].append({
                        "generated": step, "tokens_per_s": round((step - done) / (now - last), 1),
                        "cache_mib": round(cache_bytes(cache) / MIB, 3),
                        "peak_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 3) if cuda else None})
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    done, last = step, time.perf_counter()
                    if budget.left() <= 0 and step < args.gen_new:
                        row["stopped"] = "time budget"
                        break
            del cache
        row["status"] = "ok"
    except Exception as exc:  # report and go on
        row["status"] = failure(exc)
    free_memory(device, collect=row["status"] != "ok")
    return row


# ---------------------------------------------------------------------------------------------- warm-up


def allow_recompiles() -> None:
    """FlexAttention is recompiled per model shape, mask and grad mode: raise dynamo's limits, past which it
    would silently run flex_attention uncompiled (dense scores), so the rows stay what they claim."""
    import torch._dynamo

    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(256, getattr(torch._dynamo.config, knob)))


def warm_specs(families: list[Family], chosen: list[str]) -> list[str]:
    """(family, row) pairs whose kernels compile: our fused rows and FlexAttention."""
    return [f"{family.name}:{name}" for family in families for name in chosen
            if (name in FUSED or name == "hf-flex") and family.name in CONFIGS[name].families]


def warm_all(specs: list[str], argv: list[str], timeout_s: float) -> None:
    """Compile every kernel the run needs in parallel child processes, filling the on-disk caches."""
    script = str(Path(__file__).resolve())
    warm_in_children({spec: [sys.executable, script, *argv, "--warm-child", spec] for spec in specs}, timeout_s)


def warm_child(args: argparse.Namespace, spec_text: str) -> None:
    """One (family, row): a one-layer model of the real shapes, prefill and train at the check length and the
    first length (the kernels' specialisations), plus a few decode steps on Llama."""
    family_name, name = spec_text.split(":")
    allow_recompiles()
    family = FAMILIES[family_name](args, torch.device(args.device), DTYPES[args.dtype], layers=1)
    spec = CONFIGS[name]
    lengths = [family.check_length, family.lengths[0]]
    for length in lengths:
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
    if family.device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- merging


ENTRY_KEYS = {"checks": ("family", "config", "reference", "mode", "tokens"),
              "rows": ("family", "config", "mode", "tokens"),
              "generation": ("config", "prompt")}
"""Per list of results, the fields that say which measurement an entry is: the same in two runs, the same cell."""
MUST_MATCH = {"env": ("device_name", "dtype"),
              "args": ("tiny", "checkpointing", "window", "encoder_window", "llama_path")}
"""What an earlier run must share with this one for --merge: anything that changes what a cell measures."""


def load_previous(path: Path, results: dict) -> dict:
    """The earlier results to merge; refused when its cells would not compare with this run's (MUST_MATCH)."""
    return load_comparable(path, results, MUST_MATCH)


def rank(entry: dict) -> int:
    """How much an entry tells: 2 measured, 1 failed (OOM, an error, its check failed), 0 skipped."""
    status = entry.get("status", "")
    return 2 if status == "ok" else 0 if status.startswith("skipped") else 1


def redone(entry: dict) -> int:
    """Checks all rank alike: a check this run redid always replaces the earlier one."""
    return 0


def with_missing(current: dict, earlier: dict) -> dict:
    """``current``, followed by the keys of ``earlier`` it lacks."""
    return {**current, **{key: value for key, value in earlier.items() if key not in current}}


def merge_previous(results: dict, previous: dict) -> dict:
    """This run's results with the earlier run's entries it did not replace (`store.merge_runs`), and the
    union of both runs' descriptions of families, rows and fallbacks. Neither argument is changed."""
    merged = merge_runs(results, previous, ENTRY_KEYS,
                        lambda section, entry: redone(entry) if section == "checks" else rank(entry))
    merged["families"] = with_missing(results["families"], previous.get("families", {}))
    configs = previous.get("configs", {})
    merged["configs"] = {family: with_missing(results["configs"].get(family, {}), configs.get(family, {}))
                         for family in with_missing(results["configs"], configs)}
    fallbacks = previous.get("fallbacks", {})
    merged["fallbacks"] = {name: sorted({*results["fallbacks"].get(name, []), *fallbacks.get(name, [])})
                           for name in with_missing(results["fallbacks"], fallbacks)}
    return merged


# ---------------------------------------------------------------------------------------------- output


def write_outputs(results: dict, out_dir: Path, plots: bool = False) -> None:
    (out_dir / "end_to_end.json").write_text(json.dumps(results, indent=1, default=str))
    if plots:
        try:
            results["plots"] = write_plots(results, out_dir)
        except Exception as exc:  # plots are a convenience: never lose the tables over them
            results["plots_note"] = f"plots failed: {failure(exc)}"
        (out_dir / "end_to_end.json").write_text(json.dumps(results, indent=1, default=str))
    (out_dir / "end_to_end.md").write_text(markdown(results))


def cell(row: dict) -> str:
    if row.get("status") != "ok":
        return row.get("status", "")
    return f"{row['ms']:.1f} ms, {row['peak_gib']:.2f} GiB"


def markdown(results: dict) -> str:
    env = results["env"]
    marks = run_marks(results)
    lines = [f"# End-to-end attention benchmark: {env['device_name']}", "",
             f"torch {env['torch']}, transformers {env['transformers']}, triton {env.get('triton')}, {env['dtype']}, "
             f"{env['date']}. Command: `{env['command']}`", "", *merged_runs(results, marks),
             "Cells: median time of one run, and peak memory during it ("
             + ("allocated, weights included" if env["device"].startswith("cuda") else "resident-set growth, coarse")
             + "). Prefill: one "
             "forward under no_grad (Llama: the base model, without the LM head). Train: forward + backward, no "
             f"optimizer step, loss on the last {LOSS_TOKENS} positions, gradient checkpointing "
             f"{'on' if results['args']['checkpointing'] else 'off'}. Random weights.", ""]
    lines += ["## Rows", ""]
    for config in dict.fromkeys(c for per_family in results["configs"].values() for c in per_family):
        where = {f: per_family[config] for f, per_family in results["configs"].items() if config in per_family}
        options = "; ".join(f"{f}: " + (", ".join(f"{k}={v}" for k, v in info["options"].items()) or "defaults")
                            for f, info in where.items() if CONFIGS[config].variant)
        lines.append(f"- `{config}`: {next(iter(where.values()))['summary']}" + (f" ({options})" if options else ""))
    lines += ["", "## Checks", "", "Output on a short input against an fp32 run of the reference row. Exact rows must "
              f"be within {TOLERANCE:g} x the reference's own error in {env['dtype']} (+1e-3); rows that fail are not "
              "timed.", "",
              f"| model | config | reference | mode | tokens | exact | rel err vs fp32 | reference ({env['dtype']}) vs "
              f"fp32 | rel diff vs reference ({env['dtype']}) | status |", "| --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: | --- |"]
    for c in results["checks"]:
        nums = [f"{c[k]:.2e}" if isinstance(c.get(k), float) else "" for k in
                ("rel_err_vs_fp32", "reference_rel_err_vs_fp32", "rel_diff_vs_reference")]
        lines.append(f"| {c['family']} | {c['config']} | {c['reference']} | {c['mode']} | {c['tokens']} | "
                     f"{'yes' if c['exact'] else 'no'} | {' | '.join(nums)} | {c['status']}{mark(c, marks)} |")
    fell_back = {name: reasons for name, reasons in results["fallbacks"].items() if reasons}
    if fell_back:
        lines += ["", "Calls that ran on the reference path instead of the fused kernels: "
                  + "; ".join(f"{name}: {', '.join(reasons)}" for name, reasons in fell_back.items())]
    for name, info in results["families"].items():
        for mode in ("prefill", "train"):
            rows = [r for r in results["rows"] if r["family"] == name and r["mode"] == mode]
            if not rows:
                continue
            lengths = sorted({r["tokens"] for r in rows})
            params = f", {info['params'] / 1e6:.3g}M parameters" if info.get("params") else ""
            lines += ["", f"## {info['title']}{params}: {mode}", "",
                      "| config | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
                      "| --- |" + " ---: |" * len(lengths)]
            for config in dict.fromkeys(r["config"] for r in rows):
                by_len = {r["tokens"]: r for r in rows if r["config"] == config}
                lines.append(f"| {config} | " + " | ".join(cell(by_len[n]) + mark(by_len[n], marks) if n in by_len else ""
                                                          for n in lengths) + " |")
    for prompt in dict.fromkeys(g.get("prompt") for g in results["generation"]):
        lines += generation_table([g for g in results["generation"] if g.get("prompt") == prompt], marks)
    lines += ["", "## Targets", ""] + [f"- {t}" for t in targets(results)]
    if results.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"[{Path(p).name}]({Path(p).name})" for p in results["plots"])]
    elif results.get("plots_note"):
        lines += ["", results["plots_note"]]
    lines += ["", f"Run time {results.get('elapsed_s', '?')} s."]
    return "\n".join(lines) + "\n"


def generation_table(gens: list[dict], marks: dict[str, str]) -> list[str]:
    """The Markdown lines of the generation rows after one prompt length."""
    points_at = sorted({p["generated"] for g in gens for p in g["points"]})
    lines = ["", f"## Generation: Llama, {gens[0].get('prompt')}-token prompt, greedy, batch 1", "",
             "Each cell: tokens/s over the stretch ending there, KV-cache MiB, peak GiB during the stretch.", "",
             "| config | prefill ms | cache after prefill | " + " | ".join(f"after {m} new" for m in points_at) + " |",
             "| --- | ---: | ---: |" + " ---: |" * len(points_at)]
    for g in gens:
        config = g["config"] + mark(g, marks)
        if g["status"] != "ok":
            lines.append(f"| {config} | {g['status']} | |" + " |" * len(points_at))
            continue
        points = {p["generated"]: p for p in g["points"]}
        cells = [f"{points[m]['tokens_per_s']:.0f} tok/s, {points[m]['cache_mib']:.4g} MiB"
                 + (f", {points[m]['peak_gib']:.2f} GiB" if points[m]["peak_gib"] is not None else "")
                 if m in points else "" for m in points_at]
        lines.append(f"| {config} | {g['prefill_ms']:.0f} | {g['after_prefill']['cache_mib']:.4g} MiB | "
                     + " | ".join(cells) + " |")
    return lines


def targets(results: dict) -> list[str]:
    """The issue's targets, stated against what was measured."""
    def ms(config, tokens):
        row = next((r for r in results["rows"] if r["family"] == "llama" and r["mode"] == "prefill"
                    and r["config"] == config and r["tokens"] == tokens), None)
        return (row["ms"], None) if row and row.get("status") == "ok" else (None, row["status"] if row else "not run")

    out = []
    for config, peer, goal, faster in (("sliding", "hf-sdpa", 2.0, True), ("sliding", "hf-sdpa-sliding", 3.0, True),
                                       ("flash", "hf-sdpa", 1.10, False)):
        (a, why_a), (b, why_b) = ms(config, 32768), ms(peer, 32768)
        if a is None or b is None:
            out.append(f"Prefill at 32768 tokens, {config} vs {peer}: n/a ({config}: {why_a or 'ok'}, {peer}: {why_b or 'ok'})")
        elif faster:
            out.append(f"Prefill at 32768 tokens: {config} {b / a:.2f}x faster than {peer} (target >= {goal:g}x): "
                       f"{'met' if b / a >= goal else 'not met'}")
        else:
            out.append(f"Prefill at 32768 tokens: {config} takes {a / b:.2f}x {peer}'s time (target <= {goal:.2f}): "
                       f"{'met' if a / b <= goal else 'not met'}")
    gen = next((g for g in results["generation"] if g["config"] == "sliding" and g["status"] == "ok"), None)
    if gen and len(gen["points"]) > 1 and gen["points"][0]["peak_gib"] is not None:
        first, last = gen["points"][0], gen["points"][-1]
        flat = last["peak_gib"] <= first["peak_gib"] * 1.01 and last["cache_mib"] <= first["cache_mib"]
        out.append(f"Generation, sliding: peak {first['peak_gib']:.2f} -> {last['peak_gib']:.2f} GiB, cache "
                   f"{first['cache_mib']:.0f} -> {last['cache_mib']:.0f} MiB from {first['generated']} to "
                   f"{last['generated']} new tokens (target: flat): {'met' if flat else 'not met'}")
    else:
        out.append("Generation, sliding: n/a (not measured on CUDA)")
    longest = max((r["tokens"] for r in results["rows"] if r["family"] == "llama" and r["mode"] == "prefill"), default=None)
    if longest:
        (a, why_a), (b, why_b) = ms("sliding", longest), ms("hf-sdpa", longest)
        if a is None:
            out.append(f"Prefill at {longest} tokens, sliding: {why_a}")
        elif b is None:
            out.append(f"Prefill at {longest} tokens: sliding {a:.0f} ms; hf-sdpa: {why_b}")
        else:
            out.append(f"Prefill at {longest} tokens: sliding {a:.0f} ms, hf-sdpa {b:.0f} ms ({b / a:.2f}x)")
    return out


def write_plots(results: dict, out_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        results["plots_note"] = "matplotlib is not installed: no plots (pip install matplotlib)."
        print(results["plots_note"], flush=True)
        return []
    figures = []
    for name, info in results["families"].items():
        rows = [r for r in results["rows"] if r["family"] == name and r.get("status") == "ok"]
        modes = [m for m in ("prefill", "train") if any(r["mode"] == m for r in rows)]
        if not modes:
            continue
        fig, axes = plt.subplots(len(modes), 2, figsize=(12, 4.5 * len(modes)), squeeze=False)
        for i, mode in enumerate(modes):
            series = {}
            for r in sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["tokens"]):
                series.setdefault(r["config"], []).append((r["tokens"], r["ms"], r["peak_gib"]))
            for j, what in enumerate(("time (ms)", "peak memory (GiB)")):
                curves = {config: [(p[0], p[j + 1]) for p in points] for config, points in series.items()}
                log_plot(axes[i][j], curves, "tokens", what, f"{info['title']}: {mode}", log_y=True)
        figures.append((fig, out_dir / f"end_to_end_{name}.png"))
    gens = [g for g in results["generation"] if g["status"] == "ok" and g["points"]]
    gens = [g for g in gens if g["prompt"] == gens[0]["prompt"]]  # one prompt length per plot (--merge)
    if gens:
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
        for ax, (key, what) in zip(axes, (("tokens_per_s", "tokens/s"), ("cache_mib", "KV cache (MiB)"),
                                          ("peak_gib", "peak memory (GiB)")), strict=True):
            curves = {g["config"]: [(p["generated"], p[key]) for p in g["points"]] for g in gens}
            log_plot(ax, curves, "generated tokens", what, f"after a {gens[0]['prompt']}-token prompt", log_y=False)
        figures.append((fig, out_dir / "end_to_end_generation.png"))
    written = []
    for fig, path in figures:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def log_plot(ax, curves: dict[str, list[tuple[float, float | None]]], xlabel: str, ylabel: str, title: str,
             log_y: bool) -> None:
    """One line per row (HF's dashed), points without a positive value left out; log axes where data allow."""
    for config, points in curves.items():
        kept = [(x, y) for x, y in points if y is not None and y > 0]
        if kept:
            ax.plot(*zip(*kept, strict=True), "--" if config.startswith("hf-") else "-", marker="o", label=config)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{title}: {ylabel.split(' (')[0]}")
    if ax.lines:
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


# ---------------------------------------------------------------------------------------------- main


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for end_to_end.json, end_to_end.md and the plots")
    ap.add_argument("--models", default="llama,whisper,vit", help="among llama, whisper, vit")
    ap.add_argument("--variants", default=None,
                    help=f"rows, among {', '.join(CONFIGS)} (default: all but {', '.join(sorted(OPT_IN))}; "
                         "on the CPU also without hf-flex, whose compiling takes minutes there)")
    ap.add_argument("--lengths", type=int_list, default=None, help="Llama tokens (default 2048,8192,32768,131072)")
    ap.add_argument("--whisper-lengths", type=int_list, default=None,
                    help="Whisper encoder positions (default 1500,6000,24000; the input is twice as many frames)")
    ap.add_argument("--vit-sizes", type=int_list, default=None, help="ViT image sizes in px (default 512,1024,2048,4096)")
    ap.add_argument("--window", type=int, default=None, help="Llama sliding window, ours and HF's (default 4096)")
    ap.add_argument("--encoder-window", type=int, default=None,
                    help="sliding window of the encoders (reach window-1 each side; default 512)")
    ap.add_argument("--check-tokens", type=int, default=None, help="Llama check length (default 1024, below --window)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"measurements to run, among {', '.join(MODES)} (default: all; whatever the order given, "
                         "they run in the priority order: Llama prefill, generate, train, then the encoders')")
    ap.add_argument("--skip-train", action="store_true", help="leave train out of --modes")
    ap.add_argument("--train-max-tokens", type=int, default=None,
                    help="train only at lengths up to this (default 32768; 96 with --tiny)")
    ap.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                    help="train without gradient checkpointing")
    ap.add_argument("--skip-generation", action="store_true", help="leave generate out of --modes")
    ap.add_argument("--gen-prompt", type=int, default=None, help="generation prompt tokens (default 32768)")
    ap.add_argument("--gen-new", type=int, default=None, help="tokens to generate (default 1024; 8192 "
                    "takes ~2 min a row)")
    ap.add_argument("--gen-variants", default="hf-sdpa,hf-sdpa-sliding,sliding",
                    help=f"generation rows, among {', '.join(GENERATION_CONFIGS)}")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs after the warm-up, for runs under 1 s (default 3; 1 with --tiny)")
    ap.add_argument("--time-budget", type=float, default=400.0,
                    help="seconds from the start after which no new measurement starts (default 400)")
    ap.add_argument("--max-run-s", type=float, default=15.0,
                    help="skip a run whose time, extrapolated from shorter lengths, exceeds this (default 15)")
    ap.add_argument("--time-failed", action="store_true", help="time rows whose check failed too")
    ap.add_argument("--merge", type=Path, default=None,
                    help="an earlier end_to_end.json: its entries that this run did not measure (or only skipped "
                         "or failed) are kept, marked with the date of their run, and the outputs show them all")
    ap.add_argument("--llama-path", default=None, help="local Llama checkpoint with real weights (default: random)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                    help="weights and activations (default bfloat16 on CUDA, float32 on the CPU)")
    ap.add_argument("--tiny", action="store_true", help="tiny models and lengths: a quick run of the whole path")
    ap.add_argument("--no-warm", action="store_true", help="do not compile kernels in child processes first")
    ap.add_argument("--warm-timeout", type=float, default=150.0,
                    help="seconds the compiling child processes may take (default 150)")
    ap.add_argument("--warm-child", default=None, help=argparse.SUPPRESS)
    return ap


def chosen_rows(args: argparse.Namespace, device: torch.device) -> list[str]:
    if args.variants:
        names = [n for n in args.variants.split(",") if n]
        unknown = [n for n in names if n not in CONFIGS]
        if unknown:
            raise SystemExit(f"--variants: unknown {', '.join(unknown)}; choose among {', '.join(CONFIGS)}")
        return names
    return [n for n in CONFIGS if n not in OPT_IN and not (device.type == "cpu" and n == "hf-flex")]


def chosen_modes(args: argparse.Namespace) -> list[str]:
    """--modes less what --skip-train and --skip-generation remove (unknown names refused), in MODES order."""
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"--modes: unknown {', '.join(unknown)}; choose among {', '.join(MODES)}")
    dropped = {mode for mode, skip in (("train", args.skip_train), ("generate", args.skip_generation)) if skip}
    return [m for m in MODES if m in modes and m not in dropped]


def main(argv: list[str] | None = None) -> dict:
    argv_given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    args.gen_prompt = args.gen_prompt or (64 if args.tiny else 32768)
    args.gen_new = args.gen_new or (16 if args.tiny else 1024)
    args.repeats = args.repeats or (1 if args.tiny else 3)
    args.train_max_tokens = args.train_max_tokens or (96 if args.tiny else 32768)
    args.modes = chosen_modes(args)
    if args.warm_child:
        warm_child(args, args.warm_child)
        return {}
    budget = Budget(args.time_budget, args.max_run_s, start=STARTED if argv_given is None else time.time())
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = chosen_rows(args, device)
    if "hf-flex" in names:
        allow_recompiles()
    gen_names = [n for n in args.gen_variants.split(",") if n]
    if any(n not in GENERATION_CONFIGS for n in gen_names):
        raise SystemExit(f"--gen-variants: choose among {', '.join(GENERATION_CONFIGS)}")
    families = []
    for name in args.models.split(","):
        if name not in FAMILIES:
            raise SystemExit(f"--models: unknown {name!r}; choose among {', '.join(FAMILIES)}")
        families.append(FAMILIES[name](args, device, DTYPES[args.dtype]))

    import transformers

    env = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "device": str(device), "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.version.cuda, "python": platform.python_version(), "dtype": args.dtype,
           "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "command": "python benchmarks/end_to_end.py " + " ".join(argv)}
    if device.type == "cuda":
        import triton

        env["triton"] = triton.__version__
    print(env, flush=True)
    results: dict[str, Any] = {"env": env, "args": {k: v for k, v in vars(args).items() if k != "warm_child"},
                               "families": {}, "configs": {}, "checks": [], "rows": [], "generation": [],
                               "fallbacks": {}}
    previous = load_previous(args.merge, results) if args.merge else None
    fallbacks: dict[str, set[str]] = {}
    written = results

    def save(plots: bool = False) -> None:
        """Write this run's results, merged with --merge's when given."""
        nonlocal written
        results["fallbacks"] = {name: sorted(reasons) for name, reasons in fallbacks.items()}
        results["elapsed_s"] = round(budget.elapsed(), 1)
        written = merge_previous(results, previous) if previous else results
        write_outputs(written, out_dir, plots)

    if device.type == "cuda" and not args.no_warm:
        specs = warm_specs(families, names)
        print(f"compiling kernels in {len(specs)} child processes", flush=True)
        warm_all(specs, argv, args.warm_timeout)
        print(f"warm-up done at {budget.elapsed():.0f}s", flush=True)

    failed: set[tuple[str, str, bool]] = set()
    rows_of: dict[str, list[ConfigSpec]] = {}

    def activate(family: Family) -> Family:
        for other in families:
            if other is not family:
                other.release()  # only this family's weights count in its peaks
        return family

    try:
        for family in families:
            activate(family)
            specs = rows_of[family.name] = [CONFIGS[n] for n in names if family.name in CONFIGS[n].families]
            results["configs"][family.name] = {
                spec.name: {"summary": spec.summary, "exact": spec.exact,
                            "options": variant_options(spec.name, family) if spec.variant else {}} for spec in specs}
            print(f"[{family.name}] checks at {budget.elapsed():.0f}s", flush=True)
            baseline = [] if BASELINE in {spec.name for spec in specs} else [CONFIGS[BASELINE]]
            checks = prefill_checks(family, baseline + specs, fallbacks)
            if family.name == "llama" and "generate" in args.modes:
                ours = [n for n in gen_names if n in DECODE_REFERENCE]
                checks += decode_checks(family, ours, fallbacks)
            results["checks"] += checks
            if not args.time_failed:
                failed |= {(family.name, c["config"], c["mode"] == "decode") for c in checks
                           if c["status"] not in ("ok", "approximate")}
            results["families"][family.name] = {
                "title": family.title, "length_flag": family.length_flag,
                "params": sum(p.numel() for p in family.build(family.lengths[0]).parameters()),
                "inputs": {family.tokens(n): family.describe(n) for n in family.lengths}}
            save()

        def timing_phase(family: Family, mode: str) -> None:
            lengths = [n for n in family.lengths if mode == "prefill" or family.tokens(n) <= args.train_max_tokens]
            for length in lengths:
                print(f"[{family.name} {mode} {family.describe(length)}] {budget.elapsed():.0f}s", flush=True)
                for spec in rows_of[family.name]:
                    if (family.name, spec.name, False) in failed:
                        row = {"family": family.name, "config": spec.name, "mode": mode, "length": length,
                               "tokens": family.tokens(length), "status": "check failed"}
                    else:
                        row = measure_row(family, spec, mode, length, args, budget, fallbacks)
                    results["rows"].append(row)
                    print(f"  {spec.name:16s} {cell(row)}", flush=True)
                    save()

        by_name = {family.name: family for family in families}
        # priority order: all of Llama (the issue's targets), then the encoders' prefill, then their training
        llama_modes = [mode for mode in ("prefill", "generate", "train") if mode in args.modes]
        phases = [("llama", mode) for mode in llama_modes] if "llama" in by_name else []
        phases += [(f.name, mode) for mode in ("prefill", "train") if mode in args.modes
                   for f in families if f.name != "llama"]
        for family_name, mode in phases:
            family = activate(by_name[family_name])
            if mode != "generate":
                timing_phase(family, mode)
                continue
            print(f"[llama generate: {args.gen_prompt} prompt + {args.gen_new} new] {budget.elapsed():.0f}s", flush=True)
            for name in gen_names:
                if ("llama", name, True) in failed or ("llama", name, False) in failed:
                    row = {"config": name, "prompt": args.gen_prompt, "new_tokens": args.gen_new,
                           "status": "check failed", "points": []}
                else:
                    row = generate_row(family, CONFIGS[name], args, budget, fallbacks)
                results["generation"].append(row)
                print(f"  {name:16s} {row['status']} prefill {row.get('prefill_ms')} ms, "
                      + ", ".join(f"{p['generated']}: {p['tokens_per_s']} tok/s {p['cache_mib']} MiB" for p in row["points"]),
                      flush=True)
                save()
    finally:
        save(plots=True)
    print((out_dir / "end_to_end.md").read_text())
    return written


if __name__ == "__main__":
    main()
