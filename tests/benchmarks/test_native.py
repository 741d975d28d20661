"""benchmarks/native.py: merged tables keep each row within one run, targets read the right ratios, and
decoding rates come from the steps of one generation (a tiny Llama on the CPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from tiny_models import tiny_llama  # noqa: E402

ENV = {"device": "GPU", "torch": "2", "transformers": "5", "triton": "3", "dtype": "bfloat16"}


@pytest.fixture(scope="module")
def native():
    spec = importlib.util.spec_from_file_location("native_benchmark", ROOT / "benchmarks" / "native.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def write_run(path: Path, command: str, rows: list[dict]) -> Path:
    path.write_text(json.dumps({"env": ENV, "command": command, "rows": rows}))
    return path


def test_a_row_comes_whole_from_the_latest_run_that_measured_it(native, tmp_path):
    vit, prefill = "ViT-B/16 224 px, batch 64", "Llama-1B prefill 4k"
    first = write_run(tmp_path / "1.json", "first", [
        {"row": vit, "kind": "forward", "cells": {"sdpa": {"ms": 8.0}, "flex_attention": {"ms": 14.0},
                                                  "flash": {"ms": 9.0}}},
        {"row": prefill, "kind": "forward", "cells": {"sdpa": {"ms": 24.0}, "flash": {"ms": 23.0}}},
    ])
    second = write_run(tmp_path / "2.json", "second", [
        {"row": vit, "kind": "forward", "cells": {"sdpa": {"ms": 6.0}, "flash": {"ms": 6.6}}},
        {"row": prefill, "kind": "forward", "cells": {"sdpa": {"status": "skipped (time budget)"}}},
    ])
    kept = write_run(tmp_path / "3.json", "third", [
        {"row": vit, "kind": "forward", "cells": {"sdpa": {"ms": 6.1}, "sliding": {"ms": 5.0, "run": "earlier"}}},
    ])
    assert "sliding" not in {e["row"]: e for e in native.merge([first, second, kept], "merge")["rows"]}[vit]["cells"]
    merged = native.merge([first, second], "merge")
    rows = {entry["row"]: entry["cells"] for entry in merged["rows"]}
    assert rows[vit] == {"sdpa": {"ms": 6.0, "run": 2}, "flash": {"ms": 6.6, "run": 2}}  # no flex from run 1
    assert rows[prefill]["flash"] == {"ms": 23.0, "run": 1}
    assert "PASS ViT-B/16 224 px, batch 64: flash 1.10x sdpa's time" not in merged["targets"]
    assert "MISS ViT-B/16 224 px, batch 64: flash 1.10x sdpa's time" in merged["targets"]
    assert "PASS Llama-1B prefill 4k: flash 0.96x sdpa's time" in merged["targets"]


def test_runs_of_different_devices_are_not_merged(native, tmp_path):
    first = write_run(tmp_path / "1.json", "first", [])
    other = tmp_path / "2.json"
    other.write_text(json.dumps({"env": {**ENV, "device": "other"}, "command": "second", "rows": []}))
    with pytest.raises(SystemExit, match="different devices"):
        native.merge([first, other], "merge")


def test_decoding_targets_compare_tokens_per_second(native):
    row = "Llama-1B decode after 32k, batch 1, eager"
    results = {"rows": [{"row": row, "kind": "decode", "cells": {
        "sdpa": {"tokens_per_s": 50.0}, "hf-sliding": {"tokens_per_s": 40.0}, "sliding": {"tokens_per_s": 70.0}}}]}
    lines = native.targets(results, cpu=False)
    assert f"PASS {row}: sliding 0.71x sdpa's time" in lines
    assert f"PASS {row}: sliding 1.40x sdpa's tokens/s" in lines
    assert f"PASS {row}: sliding 70.0 vs transformers' own sliding window 40.0 tokens/s" in lines


def test_the_decoding_rate_is_one_over_the_median_step(native):
    model = tiny_llama()
    ids = torch.randint(3, 97, (1, 12), generator=torch.Generator().manual_seed(0))
    row = native.Row("decode", "llama", "decode", 1, 12)
    with torch.no_grad():
        rates, (warm, tokens), peak = native.decode_rate(model, lambda: {"input_ids": ids}, row, steps=6, repeats=2)
        expected = model.generate(ids, max_new_tokens=7, min_new_tokens=7, do_sample=False, pad_token_id=0)
    assert torch.equal(tokens, expected) and torch.equal(warm, expected)
    assert len(rates) == 2 and min(rates) > 0 and peak is None


def test_rows_of_new_lengths_never_decode_a_length_twice(native):
    """Every generation of a new-lengths row (the warm-up too) starts past the lengths every earlier one
    reached, so SDPA sees a new shape at every step; its tokens are not compared with the baseline's."""
    model = tiny_llama()
    spans = []
    generate = model.generate

    def noted(**kwargs):
        tokens = generate(**kwargs)
        spans.append(range(kwargs["input_ids"].shape[1], tokens.shape[1] + 1))
        return tokens

    model.generate = noted
    row = native.Row("new lengths", "llama", "decode", 1, 12, new_lengths=True)
    baseline = {"tokens": torch.zeros(1, 1, dtype=torch.long)}
    cell = native.measure_decode(row, "sdpa", model, torch.device("cpu"), torch.float32, baseline, steps=3, repeats=2)
    assert len(spans) == 3 and all(earlier[-1] < later[0] for earlier, later in zip(spans, spans[1:], strict=False))
    assert "agreement_with_sdpa" not in cell and cell["tokens_per_s"] > 0
    plain = native.Row("plain", "llama", "decode", 1, 12)
    assert {native.prompt_length(plain, 3) for _ in range(3)} == {12}


def test_forward_rows_of_new_lengths_give_every_call_a_prompt_of_its_own(native):
    model = tiny_llama()
    lengths = []
    model.model.register_forward_pre_hook(lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
                                          with_kwargs=True)
    row = native.Row("prefill, new lengths", "llama", "forward", 1, 12, new_lengths=True)
    cell = native.check_forward(row, "sdpa", model, torch.device("cpu"), torch.float32, baseline={})
    rounds = native.time_forward_round(row, "sdpa", model, torch.device("cpu"), torch.float32, calls=3)
    assert len(lengths) == 2 + 4 and len(set(lengths)) == len(lengths) and min(lengths) > 12
    assert "check" not in cell and len(cell["ms_each"]) == 1 and len(rounds["times"]) == 3


def test_eager_decoding_rows_take_the_best_of_interleaved_rounds(native, monkeypatch):
    """Each measured column gets one more timed generation per round, in turns, and its rate is the
    best of them; a round that fails leaves the column's other rounds."""
    order = []
    rates = iter([10.0, 30.0, 50.0, 20.0])

    def fake_rate(model, batch, settings):
        order.append(model)
        return next(rates), None

    class Switched:
        def __init__(self, model, family, column):
            self.column = column

        def __enter__(self):
            if self.column == "sparse" and len(order) >= 2:
                raise torch.cuda.OutOfMemoryError("out of memory")
            return self.column

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(native.measuring, "step_rate", fake_rate)
    monkeypatch.setattr(native.measuring, "Configured", Switched)
    monkeypatch.setattr(native.measuring, "inputs", lambda *args, **kwargs: {})
    row = native.Row("decode", "llama", "decode", 1, 12)
    cells = {"sdpa": {"tokens_per_s": 40.0, "tokens_per_s_each": [40.0]},
             "sparse": {"tokens_per_s": 5.0, "tokens_per_s_each": [5.0]},
             "flex_attention": {"status": "not run"}}
    native.interleaved_decode_rounds(row, cells, None, torch.device("cpu"), torch.float32, rounds=3, steps=4)
    assert order == ["sdpa", "sparse", "sdpa"]
    assert cells["sdpa"]["tokens_per_s_each"] == [40.0, 10.0, 50.0] and cells["sdpa"]["tokens_per_s"] == 50.0
    assert cells["sparse"]["tokens_per_s_each"] == [5.0, 30.0] and cells["sparse"]["tokens_per_s"] == 30.0
    assert cells["flex_attention"] == {"status": "not run"}


def test_a_forward_cell_is_its_fastest_round(native):
    cell = {"ms_each": [12.1234, 17.5, 12.0611, 14.0], "peak_gib": 2.4}
    native.fastest(cell)
    assert cell == {"ms_each": [12.123, 17.5, 12.061, 14.0], "ms": 12.061, "peak_gib": 2.4}
    failed = {"status": "out of memory"}
    native.fastest(failed)
    assert failed == {"status": "out of memory"}


def test_every_compiled_cell_starts_from_empty_compile_caches(native, monkeypatch):
    """Dynamo stops compiling a frame after `recompile_limit` versions; each compiled cell resets it."""
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(True))
    monkeypatch.setattr(native.measuring, "decode_rate", lambda *args: ([5.0], [torch.zeros(1), torch.zeros(1)], None))
    monkeypatch.setattr(native.measuring, "inputs", lambda *args, **kwargs: {})
    model = tiny_llama()
    for compiled in (False, True, True):
        row = native.Row("decode", "llama", "decode", 1, 12, compiled)
        native.measure_decode(row, "sdpa", model, torch.device("cpu"), torch.float32, {}, steps=2)
    assert len(resets) == 2
