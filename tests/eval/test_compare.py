"""The comparison runner: baseline first, every configuration on the same model, failures recorded."""

from __future__ import annotations

import json

import pytest
from tiny_models import tiny_llama

from hf_efficient_attn import is_patched
from hf_efficient_attn.eval.compare import VariantConfig, compare_variants
from hf_efficient_attn.eval.errors import EvalInputError
from hf_efficient_attn.eval.report import write_report
from hf_efficient_attn.eval.results import Score


def test_rows_deltas_failures_and_report(tmp_path):
    model = tiny_llama()
    seen = []

    def evaluate(candidate) -> Score:
        variant = candidate.config.efficient_attention["variant"] if is_patched(candidate) else None
        seen.append(variant)
        if variant == "sparse":
            raise RuntimeError("kernel exploded | badly")
        return Score("perplexity", {None: 10.0, "full": 10.0, "sliding": 12.5}[variant], higher_is_better=False)

    configs = [VariantConfig("full"), VariantConfig("sparse", {"block_size": 4}), VariantConfig("sliding", {"window": 2})]
    comparison = compare_variants(model, evaluate, configs, warm_up=lambda candidate: None, context={"model": "tiny"})
    assert seen == [None, "full", "sparse", "sliding"] and not is_patched(model)
    assert [(row.label, row.value, row.delta) for row in comparison.rows] == [
        ("baseline", 10.0, 0.0), ("full", 10.0, 0.0), ("sparse(block_size=4)", None, None), ("sliding(window=2)", 12.5, 2.5)
    ]
    assert comparison.rows[2].error == "RuntimeError: kernel exploded | badly"
    paths = write_report(comparison, tmp_path / "report")
    assert "| sparse(block_size=4) | failed: RuntimeError: kernel exploded \\| badly |" in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["rows"][3]["delta"] == 2.5
    assert paths["plot"].stat().st_size > 0


def test_callers_see_each_version_start_and_its_row_as_soon_as_it_is_done():
    events = []

    def evaluate(candidate) -> Score:
        events.append("evaluate")
        return Score("accuracy", 0.5, higher_is_better=True)

    compare_variants(
        tiny_llama(), evaluate, [VariantConfig("full"), VariantConfig("sliding", {"window": 2})],
        on_start=lambda position, label: events.append(f"start {position} {label}"),
        on_row=lambda metric, row: events.append(f"{metric} of {row.label}"),
    )
    assert events == [
        "start 0 baseline", "evaluate", "accuracy of baseline",
        "start 1 full", "evaluate", "accuracy of full",
        "start 2 sliding(window=2)", "evaluate", "accuracy of sliding(window=2)",
    ]


def test_refused_configuration_fails_before_the_baseline():
    model = tiny_llama()
    calls = []
    with pytest.raises(EvalInputError, match=r"sliding\(windw=2\) was refused: Unknown option"):
        compare_variants(model, calls.append, [VariantConfig("full"), VariantConfig("sliding", {"windw": 2})])
    assert calls == [] and not is_patched(model)


def test_progress_bars_name_the_model_version_being_scored():
    from hf_efficient_attn.eval.progress import description

    texts = []

    def evaluate(candidate) -> Score:
        texts.append(description("perplexity (strided)"))
        return Score("perplexity", 10.0, higher_is_better=False)

    compare_variants(tiny_llama(), evaluate, [VariantConfig("sliding", {"window": 2})], warm_up=lambda candidate: None)
    assert texts == ["baseline: perplexity (strided)", "sliding(window=2): perplexity (strided)"]
    assert description("transcribing") == "transcribing"  # outside a comparison: the task alone
