"""The recovery report: the share of the gap closed in both metric directions, and the files it writes."""

from __future__ import annotations

import json

import pytest

from hf_efficient_attn.train.evaluate_as import AttentionScore
from hf_efficient_attn.train.recovery import RecoveryReport, gap_closed, markdown_row
from hf_efficient_attn.train.seeds import SeedsReport, spread


@pytest.mark.parametrize(
    ("baseline", "zero_shot", "fine_tuned", "lower_is_better", "expected"),
    [
        (20.0, 30.0, 21.0, True, 0.9),  # perplexity: back to within 1 of the baseline
        (20.0, 30.0, 30.0, True, 0.0),
        (20.0, 30.0, 18.0, True, 1.2),  # beats the baseline
        (20.0, 30.0, 35.0, True, -0.5),  # got worse
        (0.96, 0.80, 0.944, False, 0.9),  # accuracy: higher is better
        (0.96, 0.80, 0.70, False, -0.625),
    ],
)
def test_gap_closed_in_both_directions(baseline, zero_shot, fine_tuned, lower_is_better, expected):
    assert gap_closed(baseline, zero_shot, fine_tuned, lower_is_better) == pytest.approx(expected)


@pytest.mark.parametrize(("zero_shot", "lower_is_better"), [(20.0, True), (19.0, True), (21.0, False), (20.0, False)])
def test_no_gap_gives_none(zero_shot, lower_is_better):
    """A patched model that is as good as or better than the baseline leaves no gap to close."""
    assert gap_closed(20.0, zero_shot, 19.5, lower_is_better) is None


def report(**changes) -> RecoveryReport:
    values = dict(
        model="/models/smollm2-135m", task="text", variant="sliding", variant_options={"window": 256}, recipe="lora", steps=20,
        metric="perplexity", lower_is_better=True, baseline=20.0, zero_shot=30.0, fine_tuned=21.0, control=19.0,
        history=[{"step": 0, "loss": None, "metric": 30.0, "learning_rate": 2e-4},
                 {"step": 10, "loss": 3.2, "metric": None, "learning_rate": 1e-4},
                 {"step": 20, "loss": 3.1, "metric": 21.0, "learning_rate": 0.0}],
        control_history=[{"step": 0, "loss": None, "metric": 20.0, "learning_rate": 2e-4},
                         {"step": 20, "loss": 3.0, "metric": 19.0, "learning_rate": 0.0}],
        train_seconds=12.5, device="cpu", versions={"torch": "2"},
    )
    return RecoveryReport(**{**values, **changes})


def test_gap_against_the_control():
    assert report().gap_closed_vs_control == pytest.approx(9 / 11)
    assert report(control=None, control_history=None).gap_closed_vs_control is None


def test_save_writes_json_markdown_and_plot(tmp_path):
    paths = report().save(tmp_path / "out")
    saved = json.loads(paths["json"].read_text())
    assert saved["gap_closed"] == pytest.approx(0.9) and saved["history"][2]["metric"] == 21.0
    assert RecoveryReport.from_dict(saved) == report()
    table = paths["markdown"].read_text()
    assert "| smollm2-135m | sliding (window=256) | lora | 20 | perplexity | 20 | 30 | 21 | 90.0% | 19 | 81.8% |" in table
    assert paths["plot"].read_bytes().startswith(b"\x89PNG")


def test_markdown_says_when_there_is_no_gap(tmp_path):
    paths = report(zero_shot=19.0, control=None, control_history=None).save(tmp_path)
    assert "n/a (zero-shot not worse)" in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["gap_closed"] is None


def test_recipe_cell_names_distillation_and_augmentation():
    row = markdown_row(report(recipe="full", config={"distill_weight": 0.5}, augmented=True))
    assert "| sliding (window=256) | full + distill 0.5, augmented | 20 |" in row
    assert "| lora | 20 |" in markdown_row(report(config={"distill_weight": 0.0}))


def scored_as() -> list[AttentionScore]:
    return [AttentionScore("unpatched", {}, zero_shot=20.0, fine_tuned=19.5),
            AttentionScore("sliding", {"window": 64, "sink_tokens": 4}, zero_shot=40.0, fine_tuned=24.0)]


def test_scores_under_other_attention_in_json_and_markdown(tmp_path):
    """Each configuration's gap runs from its own zero-shot: (40 - 24) / (40 - 20) to the baseline, (40 - 24) /
    (40 - 19) to the control; the unpatched model's zero-shot is the baseline, so it has no gap to the baseline."""
    paths = report(evaluated_as=scored_as()).save(tmp_path)
    saved = json.loads(paths["json"].read_text())
    unpatched, sliding = saved["evaluated_as"]
    assert (sliding["gap_closed"], sliding["gap_closed_vs_control"]) == pytest.approx((0.8, 16 / 21))
    assert unpatched["gap_closed"] is None and unpatched["gap_closed_vs_control"] == pytest.approx(0.5)
    assert RecoveryReport.from_dict(saved) == report(evaluated_as=scored_as())
    table = paths["markdown"].read_text().splitlines()
    rows = [line for line in table if line.startswith("| smollm2-135m")]
    assert rows[1:] == [
        "| smollm2-135m | sliding (window=256) → scored as unpatched | lora | 20 | perplexity | 20 | 20 | 19.5 | "
        "n/a (zero-shot not worse) | 19 | 50.0% |",
        "| smollm2-135m | sliding (window=256) → scored as sliding (window=64, sink_tokens=4) | lora | 20 | perplexity | 20 | "
        "40 | 24 | 80.0% | 19 | 76.2% |",
    ]


def test_report_without_scores_under_other_attention_loads():
    """A recovery.json written before ``evaluated_as`` existed loads with none."""
    saved = report().to_dict()
    del saved["evaluated_as"]
    assert RecoveryReport.from_dict(saved).evaluated_as == []


def test_spread_leaves_out_missing_values():
    value = spread([0.5, None, 0.7, 0.9])
    assert (value.mean, value.std, value.min, value.max, value.count) == pytest.approx((0.7, 0.2, 0.5, 0.9, 3))
    assert spread([None, None]) is None and spread([3.0]).std is None


def test_seeds_report_round_trip_and_missing_gaps(tmp_path):
    """Seeds whose zero-shot was not worse have no gap share; the table counts the seeds that have one."""
    reports = [report(zero_shot=30.0, fine_tuned=22.0, evaluated_as=scored_as()), report(zero_shot=19.0, fine_tuned=18.0)]
    reports[1].evaluated_as = [AttentionScore("unpatched", {}, 20.0, 19.0), AttentionScore("sliding", {"window": 64, "sink_tokens": 4}, 30.0, 25.0)]
    seeds = SeedsReport([0, 1], reports)
    paths = seeds.save(tmp_path)
    saved = json.loads(paths["json"].read_text())
    trained = saved["summary"]["sliding (window=256)"]
    assert trained["gap_closed"]["values"] == [pytest.approx(0.8), None] and trained["gap_closed"]["count"] == 1
    assert saved["summary"]["scored as unpatched"]["gap_closed"] is None
    assert saved["summary"]["scored as sliding (window=64, sink_tokens=4)"]["gap_closed"]["mean"] == pytest.approx((0.8 + 0.5) / 2)
    assert SeedsReport.from_dict(saved) == seeds
    table = paths["markdown"].read_text()
    assert "| sliding (window=256) | gap closed | 80.0% | n/a | 80.0% | 80.0% | 1 | 80.0% | n/a |" in table
    assert "| scored as unpatched | gap closed | n/a | n/a | n/a | n/a | 0 | n/a | n/a |" in table
