"""Native sizes: patched models against the unpatched one where models are run every day.

Rows (GPU): ViT-B/16 at 224 px (batch 64), the Whisper-large-v3 encoder at 1500 positions (batch 4),
Llama-3.2-1B shapes prefilling 2k and 4k tokens, the same prefilling 32k and 128k tokens (for peak
memory), and greedy decoding after 4k and 32k prompts at batch 1 and 16, eager (growing cache) and
compiled (``cache_implementation="static"``, which transformers compiles itself), and eager decoding over
lengths never seen before in the process, and a 2k prefill the same way ("new lengths": every
generation or forward starts from a prompt length of its own, so SDPA's cuDNN backend meets a new shape
at every call, as it does when a server takes a prompt of a length it has not seen; no exactness check
there, each call having its own input).
Columns: transformers'
``sdpa`` (the baseline), ``flex_attention``, its own sliding window (Llama: the same weights as a Mistral
model with ``sliding_window``), and ours: ``flash``, ``sliding`` and ``sparse``. Random weights of the real
shapes, bfloat16, one process. Forward times are CUDA-event timings taken in interleaved rounds (every
column a few calls per round), so that drifts of clocks and temperature fall on every column alike; a
cell is the fastest of them, as a busy host or a neighbour on a shared machine only ever adds time. A
decoding rate is one over the median time between two steps of a generation; eager rows take the best
of such rates over interleaved rounds, compiled rows the best of generations in a row.

    python benchmarks/native.py --out benchmarks/results/native-h200          # a GPU
    python benchmarks/native.py --cpu --out benchmarks/results/native-cpu     # the CPU: SmolLM2-135M shapes

Each cell is checked: exact columns (``flash``, and ``sliding``/``sparse`` where they cover the input) must
give the baseline's output (forward rows) or tokens (decoding rows). The targets are printed at the end:
every cell of ours within 1.05x of ``sdpa`` in the same mode (1.10x on the CPU), ``sliding`` decoding after
32k at least 1.3x ``sdpa`` and at least transformers' own sliding window, and peak memory of ours at most
``sdpa``'s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, where it is not installed

from hf_efficient_attn import patch_model, unpatch_model  # noqa: E402

GIB = 2**30
OURS = ("flash", "sliding", "sparse")
COLUMNS = ("sdpa", "flex_attention", "hf-sliding", *OURS)
WINDOW = 4096
"""Sliding window of ours and of transformers' own (Llama rows); encoders use `ENCODER_WINDOW`."""
ENCODER_WINDOW = 512
SPARSE = {"block_size": 128, "local_blocks": 8, "global_blocks": 1, "random_blocks": 2}


@dataclass(frozen=True)
class Row:
    """One row: a family, what is run and its sizes."""

    name: str
    family: str  # "vit", "whisper", "llama"
    kind: str  # "forward", "memory" or "decode"
    batch: int
    tokens: int  # image side for ViT, positions for Whisper, prompt tokens for Llama
    compiled: bool = False
    new_lengths: bool = False  # decoding: every generation from a prompt length not used before (`prompt_length`)


def gpu_rows() -> list[Row]:
    rows = [Row("ViT-B/16 224 px, batch 64", "vit", "forward", 64, 224),
            Row("Whisper-large-v3 encoder 1500, batch 4", "whisper", "forward", 4, 1500),
            Row("Llama-1B prefill 2k", "llama", "forward", 1, 2048),
            Row("Llama-1B prefill 4k", "llama", "forward", 1, 4096),
            Row("Llama-1B prefill 32k (memory)", "llama", "memory", 1, 32768),
            Row("Llama-1B prefill 128k (memory)", "llama", "memory", 1, 131072)]
    for compiled in (False, True):
        for prompt in (4096, 32768):
            for batch in (1, 16):
                mode = "compiled static" if compiled else "eager"
                rows.append(Row(f"Llama-1B decode after {prompt // 1024}k, batch {batch}, {mode}", "llama", "decode",
                                batch, prompt, compiled))
    rows.append(Row("Llama-1B prefill 2k, new lengths", "llama", "forward", 1, 2048, new_lengths=True))
    for batch in (1, 16):
        rows.append(Row(f"Llama-1B decode after 4k, batch {batch}, eager, new lengths", "llama", "decode", batch, 4096,
                        new_lengths=True))
    return rows


def cpu_rows() -> list[Row]:
    return [Row("ViT (tiny) 224 px, batch 8", "vit", "forward", 8, 224),
            Row("Whisper encoder (tiny) 1500, batch 1", "whisper", "forward", 1, 1500),
            Row("SmolLM2-135M prefill 1024", "llama", "forward", 1, 1024),
            Row("SmolLM2-135M decode after 1024, batch 1, eager", "llama", "decode", 1, 1024)]


# ---------------------------------------------------------------------------------------------- models


def build(family: str, cpu: bool, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Random weights of the real shapes (the CPU mode: SmolLM2-135M, whisper-tiny and a small ViT)."""
    from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTModel, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    if family == "llama":
        shape = (dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192)
                 if cpu else
                 dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                      rope_theta=500000.0))
        config = LlamaConfig(**shape, tie_word_embeddings=True)
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    elif family == "whisper":
        shape = (dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, num_mel_bins=80)
                 if cpu else
                 dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128))
        model = WhisperEncoder._from_config(WhisperConfig(**shape, decoder_layers=1), dtype=dtype,
                                            attn_implementation="sdpa")
    else:
        shape = (dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768) if cpu
                 else dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072))
        model = ViTModel._from_config(ViTConfig(**shape, image_size=224, patch_size=16), dtype=dtype,
                                      attn_implementation="sdpa", add_pooling_layer=False)
    return model.to(device).eval()


def mistral_twin(model: nn.Module, window: int) -> nn.Module:
    """The Llama model's weights (shared, not copied) as a MistralForCausalLM with ``sliding_window``."""
    from transformers import MistralConfig, MistralForCausalLM

    source = model.config
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
              "tie_word_embeddings", "rope_theta")
    config = MistralConfig(**{f: getattr(source, f) for f in fields if hasattr(source, f)}, sliding_window=window)
    with torch.device("meta"):
        twin = MistralForCausalLM(config)
    twin.load_state_dict(model.state_dict(), assign=True)
    twin.model.rotary_emb = model.model.rotary_emb
    twin.set_attn_implementation("sdpa")
    return twin.eval()


def options(column: str, family: str) -> dict[str, Any]:
    if column == "sliding":
        return {"window": WINDOW if family == "llama" else ENCODER_WINDOW}
    return dict(SPARSE) if column == "sparse" else {}


class Configured:
    """The row's model switched to a column, and back afterwards (one set of weights for every column)."""

    def __init__(self, model: nn.Module, family: str, column: str):
        self.model, self.family, self.column = model, family, column

    def __enter__(self) -> nn.Module:
        if self.column in OURS:
            return patch_model(self.model, self.column, **options(self.column, self.family))
        if self.column == "hf-sliding":
            return mistral_twin(self.model, WINDOW)
        self.model.set_attn_implementation(self.column)
        return self.model

    def __exit__(self, *exc) -> None:
        if self.column in OURS:
            unpatch_model(self.model)
        self.model.set_attn_implementation("sdpa")


# ---------------------------------------------------------------------------------------------- measuring


_GENERATIONS = itertools.count(1)


def prompt_length(row: Row, steps: int) -> int:
    """The prompt of a generation (or a forward, ``steps`` 0): the row's, or for rows of new lengths the
    row's plus a stretch past every earlier generation's last length (each covers ``steps + 1`` lengths
    after its prompt)."""
    return row.tokens + next(_GENERATIONS) * (steps + 2) if row.new_lengths else row.tokens


def inputs(row: Row, model: nn.Module, device: torch.device, dtype: torch.dtype,
           tokens: int | None = None) -> dict[str, torch.Tensor]:
    """The row's batch (``tokens``: a Llama prompt of another length than the row's)."""
    generator = torch.Generator().manual_seed(1)
    if row.family == "vit":
        return {"pixel_values": torch.randn(row.batch, 3, 224, 224, generator=generator).to(device, dtype)}
    if row.family == "whisper":
        mels = model.config.num_mel_bins
        return {"input_features": torch.randn(row.batch, mels, 2 * row.tokens, generator=generator).to(device, dtype)}
    # token 0 is the generation settings' pad token: a prompt holding it would be read as padded
    ids = torch.randint(1, model.config.vocab_size, (row.batch, tokens or row.tokens), generator=generator).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}  # as a tokenizer gives them


def forward(model: nn.Module, family: str, batch: dict) -> torch.Tensor:
    base = model.model if family == "llama" else model
    extra = {"use_cache": False} if family == "llama" else {}
    return base(**batch, **extra).last_hidden_state


def timed(work: Callable[[], object], device: torch.device, calls: int) -> tuple[list[float], float | None]:
    """Milliseconds of each of ``calls`` runs of ``work`` (after a warm-up) and the peak memory in GiB
    (CUDA: allocator peak; CUDA events time each run)."""
    work()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(calls):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            work()
            end.record()
            torch.cuda.synchronize(device)
            times.append(begin.elapsed_time(end))
        else:
            tick = time.perf_counter()
            work()
            times.append(1e3 * (time.perf_counter() - tick))
    peak = torch.cuda.max_memory_allocated(device) / GIB if cuda else None
    return times, peak


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def fastest(cell: dict[str, Any]) -> None:
    """A cell's figure from its rounds: the least time, the highest rate (interference only slows a round)."""
    if cell.get("ms_each"):
        cell["ms"] = round(min(cell["ms_each"]), 3)
        cell["ms_each"] = [round(t, 3) for t in cell["ms_each"]]
    if cell.get("tokens_per_s_each"):
        cell["tokens_per_s"] = max(cell["tokens_per_s_each"])


class StepClock(StoppingCriteria):
    """Stops nothing; notes when each decoding step's tokens are known (after the device finished)."""

    def __init__(self, device: torch.device):
        self.device, self.stamps = device, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def decode_rate(model: nn.Module, batches: Callable[[], dict], row: Row, steps: int,
                repeats: int = 1) -> tuple[list[float], list[torch.Tensor], float | None]:
    """Tokens per second (per sequence) of greedy decoding after the prompt (`step_rate`) in each of
    ``repeats`` timed generations, after a warm-up generation (which compiles the decoding step for static
    caches), each on a batch from ``batches``; the tokens of the warm-up and the last timed generation, and
    the peak memory of the timed ones."""
    settings = generation_settings(row, steps)
    warm = model.generate(**batches(), **settings)
    device = warm.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rates = []
    for _ in range(repeats):
        rate, tokens = step_rate(model, batches(), settings)
        rates.append(rate)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return rates, [warm.cpu(), tokens.cpu()], peak


def generation_settings(row: Row, steps: int) -> dict[str, Any]:
    """Greedy decoding of exactly ``steps + 1`` new tokens; compiled rows with a static cache."""
    settings = dict(do_sample=False, pad_token_id=0, max_new_tokens=steps + 1, min_new_tokens=steps + 1)
    if row.compiled:
        settings["cache_implementation"] = "static"
    return settings


def step_rate(model: nn.Module, batch: dict, settings: dict) -> tuple[float, torch.Tensor]:
    """One over the median time between two steps of one generation of ``steps + 1`` new tokens (so a
    slow step, or the prompt, does not count), and its tokens."""
    clock = StepClock(batch["input_ids"].device)
    tokens = model.generate(**batch, **settings, stopping_criteria=StoppingCriteriaList([clock]))
    intervals = [later - earlier for earlier, later in zip(clock.stamps, clock.stamps[1:], strict=False)]
    return 1.0 / median(intervals), tokens


def agreement(first: torch.Tensor, second: torch.Tensor) -> float:
    """Share of generated positions where two greedy generations agree up to their first difference, over
    the rows (random weights leave near-ties, so rounding alone can send two exact paths apart)."""
    same = (first == second).cumprod(dim=-1)
    return float(same.float().mean())


def exact_here(column: str, row: Row) -> bool:
    """Whether the column computes exactly the baseline's attention on this row."""
    if column in ("sdpa", "flex_attention", "flash"):
        return True
    if column == "hf-sliding":
        return row.tokens <= WINDOW if row.kind != "decode" else False
    if column == "sliding":
        reach = WINDOW if row.family == "llama" else ENCODER_WINDOW
        length = {"vit": 197, "whisper": row.tokens}.get(row.family, row.tokens)
        return length <= reach and row.kind != "decode"
    return False


def measure_decode(row: Row, column: str, model: nn.Module, device: torch.device, dtype: torch.dtype,
                   baseline: dict, steps: int, repeats: int = 1) -> dict[str, Any]:
    """One column of a decoding row; compiled rows time ``repeats`` generations in a row (switching columns
    would recompile the step), eager rows one (`interleaved_decode_rounds` adds the others).

    A compiled cell starts from empty compile caches: transformers compiles the same forward frame for
    every column and row, and once that frame has been compiled ``torch._dynamo.config.recompile_limit``
    times (8) dynamo runs it eagerly from then on, so the later cells would time eager decoding."""
    if row.compiled:
        torch._dynamo.reset()
    def batches() -> dict[str, torch.Tensor]:
        return inputs(row, model, device, dtype, tokens=prompt_length(row, steps))

    with Configured(model, row.family, column) as target, torch.no_grad():
        rates, (warm, tokens), peak = decode_rate(target, batches, row, steps, repeats)
    rates = [round(rate, 2) for rate in rates]
    cell = {"tokens_per_s": max(rates), "tokens_per_s_each": rates, "peak_gib": peak and round(peak, 3)}
    if row.new_lengths:
        return cell  # each generation has its own prompt: nothing to compare tokens with
    cell["rerun_agreement"] = round(agreement(warm, tokens), 3)
    if "tokens" in baseline and exact_here(column, row):
        cell["agreement_with_sdpa"] = round(agreement(tokens, baseline["tokens"]), 3)
    baseline.setdefault("tokens", tokens)
    return cell


def forward_work(row: Row, target: nn.Module, model: nn.Module, device: torch.device,
                 dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    """One forward of the row; for rows of new lengths each call on a prompt of its own length (its batch
    made inside the timed call: a few microseconds of host time, alike for every column)."""
    if row.new_lengths:
        return lambda: forward(target, row.family, inputs(row, model, device, dtype, tokens=prompt_length(row, 0)))
    batch = inputs(row, model, device, dtype)
    return lambda: forward(target, row.family, batch)


def check_forward(row: Row, column: str, model: nn.Module, device: torch.device, dtype: torch.dtype,
                  baseline: dict) -> dict[str, Any]:
    """The column's output against the baseline's (exact columns; not for rows of new lengths, whose
    every call has its own input) and its peak memory."""
    with Configured(model, row.family, column) as target, torch.no_grad():
        times, peak = timed(forward_work(row, target, model, device, dtype), device, calls=1)
        cell = {"ms_each": times, "peak_gib": peak and round(peak, 3)}
        if row.kind == "forward" and not row.new_lengths:
            output = forward(target, row.family, inputs(row, model, device, dtype)).float().cpu()
            if "output" in baseline and exact_here(column, row):
                error = (output - baseline["output"]).abs().max().item() / baseline["output"].abs().max().item()
                cell["check"] = f"rel. err {error:.1e}" + ("" if error < 2e-2 else " TOO LARGE")
            baseline.setdefault("output", output)
    return cell


def time_forward_round(row: Row, column: str, model: nn.Module, device: torch.device, dtype: torch.dtype,
                       calls: int) -> dict[str, list[float]]:
    with Configured(model, row.family, column) as target, torch.no_grad():
        times, _ = timed(forward_work(row, target, model, device, dtype), device, calls)
    return {"times": times}


# ---------------------------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cpu" if args.cpu else "cuda")
    dtype = torch.float32 if args.cpu else torch.bfloat16
    rows = cpu_rows() if args.cpu else gpu_rows()
    if args.rows:
        rows = [row for row in rows if any(part in row.name for part in args.rows)]
    columns = [c for c in COLUMNS if not args.columns or c in args.columns]
    deadline = time.time() + args.time_budget
    results = {"env": environment(device, dtype), "command": args.command, "rows": []}
    models: dict[str, nn.Module] = {}
    previous = earlier_cells(args.keep, results["env"]) if args.keep else {}
    for row in rows:
        model = models.get(row.family)
        if model is None:
            models.clear()
            torch.cuda.empty_cache() if device.type == "cuda" else None
            model = models[row.family] = build(row.family, args.cpu, dtype, device)
        baseline: dict = {}
        entry = {"row": row.name, "kind": row.kind, "cells": {}}
        for column in columns:
            if column == "hf-sliding" and row.family != "llama":
                continue
            if (row.name, column) in previous:
                entry["cells"][column] = previous[(row.name, column)]
                continue
            if column == "flex_attention" and row.kind == "decode" and not row.compiled:
                entry["cells"][column] = {"status": "not run (recompiles at every step of a growing cache)"}
                continue
            if time.time() > deadline:
                entry["cells"][column] = {"status": "skipped (time budget)"}
                continue
            if row.kind == "decode":
                repeats = max(1, args.rounds) if row.compiled else 1
                cell = attempt(device, measure_decode, row, column, model, device, dtype, baseline, args.decode_steps,
                               repeats)
            else:
                cell = attempt(device, check_forward, row, column, model, device, dtype, baseline)
            entry["cells"][column] = cell
        if row.kind == "forward":
            interleaved_rounds(row, entry["cells"], model, device, dtype, args.rounds)
        if row.kind == "decode" and not row.compiled:
            interleaved_decode_rounds(row, entry["cells"], model, device, dtype, args.rounds, args.decode_steps)
        for column, cell in entry["cells"].items():
            fastest(cell)
            print(f"{row.name:55s} {column:15s} {json.dumps(cell)}", flush=True)
        results["rows"].append(entry)
        save(results, args.out)
    results["targets"] = targets(results, args.cpu)
    save(results, args.out)
    return results


def attempt(device: torch.device, measure: Callable[..., dict], *args: Any) -> dict:
    """``measure(*args)``, a cell's measurement, or what went wrong (an OOM or an error is a result too)."""
    try:
        return measure(*args)
    except Exception as exc:
        return {"status": f"{type(exc).__name__}: {str(exc)[:160]}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def interleaved_rounds(row: Row, cells: dict[str, dict], model: nn.Module, device: torch.device,
                       dtype: torch.dtype, rounds: int) -> None:
    """Time the row's columns in turns (each round runs every column a few times), so that a drift of
    the clock or of the device's temperature over the row falls on every column alike."""
    measured = [column for column, cell in cells.items() if "ms_each" in cell and cell.get("run") != "earlier"]
    if rounds:
        for column in measured:
            cells[column]["ms_each"] = []  # the check's one call counts only without rounds
    for _ in range(rounds):
        for column in measured:
            if "ms_each" not in cells[column]:
                continue  # failed in an earlier round
            times = attempt(device, time_forward_round, row, column, model, device, dtype, 4)
            if "times" in times:
                cells[column]["ms_each"] += times["times"]
            else:
                cells[column] = {**times, "peak_gib": cells[column].get("peak_gib")}


def interleaved_decode_rounds(row: Row, cells: dict[str, dict], model: nn.Module, device: torch.device,
                              dtype: torch.dtype, rounds: int, steps: int) -> None:
    """Decode the row's columns in turns, one timed generation each per round after the first (which
    `measure_decode` ran); a column's rate is the best of its rounds (`fastest`), as a slow host moment
    falls on one round of one column. Eager rows only: switching columns would recompile a compiled step every round."""
    measured = [column for column, cell in cells.items() if "tokens_per_s_each" in cell]
    settings = generation_settings(row, steps)

    def one_round(column: str) -> dict[str, float]:
        batch = inputs(row, model, device, dtype, tokens=prompt_length(row, steps))
        with Configured(model, row.family, column) as target, torch.no_grad():
            return {"rate": step_rate(target, batch, settings)[0]}

    for _ in range(rounds - 1):
        for column in measured:
            result = attempt(device, one_round, column)
            if "rate" in result:  # a round that failed (out of memory) leaves the others
                cells[column]["tokens_per_s_each"].append(round(result["rate"], 2))
    for column in measured:
        fastest(cells[column])


def earlier_cells(path: Path, env: dict) -> dict[tuple[str, str], dict]:
    """Cells measured by an earlier run (its native.json) on the same device and versions, to keep."""
    earlier = json.loads(path.read_text())
    if earlier["env"] != env:
        raise SystemExit(f"--keep {path}: measured on {earlier['env']}, not {env}; measure again instead")
    return {(entry["row"], column): {**cell, "run": "earlier"} for entry in earlier["rows"]
            for column, cell in entry["cells"].items() if value(cell) is not None}


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'x86_64'})"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "-"
    return {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "triton": triton_version, "dtype": str(dtype).replace("torch.", "")}


def value(cell: dict) -> float | None:
    return cell.get("ms", cell.get("tokens_per_s"))


def targets(results: dict, cpu: bool) -> list[str]:
    """The issue's targets, each line PASS or MISS with its figures."""
    limit = 1.10 if cpu else 1.05
    lines = []
    for entry in results["rows"]:
        cells = entry["cells"]
        base = cells.get("sdpa", {})
        for column in OURS:
            cell = cells.get(column, {})
            if value(cell) is None or value(base) is None:
                continue
            ratio = value(cell) / value(base) if "ms" in cell else value(base) / value(cell)
            if entry["kind"] != "memory":
                lines.append(f"{'PASS' if ratio <= limit else 'MISS'} {entry['row']}: {column} {ratio:.2f}x sdpa's time")
            if cell.get("peak_gib") is not None and base.get("peak_gib") is not None:
                ok = cell["peak_gib"] <= base["peak_gib"] * 1.01
                lines.append(f"{'PASS' if ok else 'MISS'} {entry['row']}: {column} peak {cell['peak_gib']:.2f} GiB "
                             f"vs sdpa {base['peak_gib']:.2f}")
        if entry["kind"] == "decode" and "32k" in entry["row"] and value(cells.get("sliding", {})):
            speedup = value(cells["sliding"]) / value(base) if value(base) else float("nan")
            lines.append(f"{'PASS' if speedup >= 1.3 else 'MISS'} {entry['row']}: sliding {speedup:.2f}x sdpa's tokens/s")
            own = value(cells.get("hf-sliding", {}))
            if own:
                ok = value(cells["sliding"]) >= own
                lines.append(f"{'PASS' if ok else 'MISS'} {entry['row']}: sliding {value(cells['sliding']):.1f} vs "
                             f"transformers' own sliding window {own:.1f} tokens/s")
    return lines


def markdown(results: dict) -> str:
    env = results["env"]
    columns = [c for c in COLUMNS if any(c in e["cells"] for e in results["rows"])]
    lines = [f"{env['device']}, torch {env['torch']}, transformers {env['transformers']}, triton {env['triton']}, "
             f"{env['dtype']}; `{results['command']}`", ""]
    if results.get("runs"):
        lines += ["Merged from the runs: " + "; ".join(f"{n}: `{c}`" for n, c in enumerate(results["runs"], 1))
                  + ". Each row comes whole from one run, named by the superscripts.", ""]
    lines += [
             "Forward and prefill rows: ms (lower is better); decoding rows: tokens/s per sequence (higher is "
             "better); peak memory in GiB below each figure. † measured by the earlier run the table was merged "
             "with (same device and versions).", "",
             "| row | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for entry in results["rows"]:
        cells = []
        for column in columns:
            cell = entry["cells"].get(column)
            if cell is None:
                cells.append("")
            elif value(cell) is None:
                cells.append(cell.get("status", "")[:40])
            else:
                unit = "" if "ms" in cell else " tok/s"
                peak = f"<br>{cell['peak_gib']:.2f} GiB" if cell.get("peak_gib") is not None else ""
                flag = " ⚠" if "LARGE" in cell.get("check", "") else ""
                flag += " †" if cell.get("run") == "earlier" else ""
                flag += f" <sup>{cell['run']}</sup>" if isinstance(cell.get("run"), int) else ""
                cells.append(f"{value(cell):.3g}{unit}{peak}{flag}")
        lines.append(f"| {entry['row']} | " + " | ".join(cells) + " |")
    if results.get("targets"):
        lines += ["", "Targets:", ""] + [f"- {line}" for line in results["targets"]]
    return "\n".join(lines) + "\n"


def merge(paths: list[Path], command: str) -> dict:
    """One table from several runs on the same device and versions: each row whole from the latest run
    that measured it, so that every comparison in a row is within one run; each cell names its run."""
    runs = [json.loads(path.read_text()) for path in paths]
    if any(run["env"] != runs[0]["env"] for run in runs):
        raise SystemExit("--merge: the runs were made on different devices or versions")
    order = [row.name for row in gpu_rows() + cpu_rows()]
    rows: dict[str, dict] = {}
    for number, run_ in enumerate(runs, start=1):
        for entry in run_["rows"]:
            if not any(value(cell) is not None and cell.get("run") != "earlier" for cell in entry["cells"].values()):
                continue  # measured nothing here (skipped, or cells kept from an earlier run)
            cells = {column: {**cell, "run": number} for column, cell in entry["cells"].items()
                     if cell.get("run") != "earlier"}  # kept cells are not this run's
            for cell in cells.values():
                fastest(cell)  # runs saved before cells were their fastest round took the median
            rows[entry["row"]] = {"row": entry["row"], "kind": entry["kind"], "cells": cells}
    results = {"env": runs[0]["env"], "command": command, "runs": [run_["command"] for run_ in runs],
               "rows": sorted(rows.values(), key=lambda entry: order.index(entry["row"]))}
    results["targets"] = targets(results, "CPU" in results["env"]["device"])
    return results


def save(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    serialisable = json.loads(json.dumps(results, default=str))
    (out / "native.json").write_text(json.dumps(serialisable, indent=1))
    (out / "native.md").write_text(markdown(results))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="CPU mode: SmolLM2-135M, whisper-tiny and a small ViT")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/native"))
    parser.add_argument("--rows", nargs="*", help="run only rows whose name contains one of these")
    parser.add_argument("--columns", nargs="*", choices=COLUMNS, help="run only these columns")
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds: interleaved for the forward and eager decoding rows, timed generations in a row per column for the compiled ones")
    parser.add_argument("--time-budget", type=float, default=540.0, help="seconds; later cells are skipped")
    parser.add_argument("--merge", type=Path, nargs="+", help="measure nothing: merge these runs' native.json "
                        "(same device and versions, later runs win) into --out")
    parser.add_argument("--keep", type=Path, help="an earlier run's native.json: its cells are kept, not measured "
                        "again (same device and versions; the table marks them)")
    args = parser.parse_args(argv)
    args.command = "python benchmarks/native.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    return args


def main(argv: list[str] | None = None) -> dict:
    warnings.filterwarnings("ignore", module="transformers")
    args = parse(argv)
    if args.merge:
        results = merge(args.merge, args.command)
        save(results, args.out)
    else:
        results = run(args)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
