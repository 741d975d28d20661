"""Measuring one cell: forward rows timed with CUDA events in interleaved rounds, decoding rates from
the steps of one generation, exactness against the baseline, failures kept as results."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from benchmarks.harness.memory import GIB, allocator_peak, reset_peak
from benchmarks.harness.timing import run_ms, synchronize

from .models import Configured, forward, inputs, prompt_length
from .rows import ENCODER_WINDOW, WINDOW, Row


def timed(work: Callable[[], object], device: torch.device, calls: int) -> tuple[list[float], float | None]:
    """Milliseconds of each of ``calls`` runs of ``work`` (after a warm-up; CUDA events on a GPU) and the
    allocator's peak memory over them in GiB (None on the CPU)."""
    work()
    synchronize(device)
    reset_peak(device)
    times = [run_ms(work, device) for _ in range(calls)]
    return times, _peak_gib(device)


def _peak_gib(device: torch.device) -> float | None:
    peak = allocator_peak(device)
    return None if peak is None else peak / GIB


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
    synchronize(device)
    reset_peak(device)
    rates = []
    for _ in range(repeats):
        rate, tokens = step_rate(model, batches(), settings)
        rates.append(rate)
    return rates, [warm.cpu(), tokens.cpu()], _peak_gib(device)


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
