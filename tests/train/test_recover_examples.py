"""The three recovery scripts of examples/, end to end for two steps on tiny random-weight checkpoints and tiny local data."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from recovery_checkpoints import (
    TEXT,
    image_folder,
    llama_checkpoint,
    text_folder,
    vit_checkpoint,
    whisper_checkpoint,
    write_wav_folder,
)
from training_batches import run_on_two_cpu_ranks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
COMMON = ["--steps", "2", "--batch-size", "2", "--no-progress"]


def run_example(script: str, arguments: list[str], monkeypatch) -> dict:
    """Run an example as ``python examples/<script> ...`` would, in this process; return its saved report."""
    out = Path(arguments[arguments.index("--output-dir") + 1])
    monkeypatch.setattr(sys, "argv", [script, *arguments, *COMMON])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert {path.name for path in out.iterdir()} >= {"recovery.json", "recovery.md", "recovery.png"}
    return json.loads((out / "recovery.json").read_text())


def test_causal_lm_with_a_control_run(tmp_path, monkeypatch):
    model = llama_checkpoint(tmp_path / "llama")
    corpus = tmp_path / "held-out.txt"
    corpus.write_text(TEXT * 3)
    arguments = ["--model", str(model), "--train-data", str(text_folder(tmp_path / "train")), "--eval-data", str(corpus),
                 "--window", "8", "--seq-len", "64", "--eval-tokens", "200", "--recipe", "full", "--control",
                 "--output-dir", str(tmp_path / "out")]
    report = run_example("recover_causal_lm.py", arguments, monkeypatch)
    assert (report["metric"], report["lower_is_better"], report["variant_options"]) == ("perplexity", True, {"window": 8})
    assert [row["step"] for row in report["history"] if row["metric"] is not None] == [0, 2]
    assert report["control"] == report["control_history"][-1]["metric"]
    assert report["fine_tuned"] == report["history"][-1]["metric"] and report["zero_shot"] > 1


def test_whisper_windowed_encoder(tmp_path, monkeypatch):
    arguments = ["--model", str(whisper_checkpoint(tmp_path / "whisper")), "--window", "4",
                 "--train-data", str(write_wav_folder(tmp_path / "train", 16000)),
                 "--eval-data", str(write_wav_folder(tmp_path / "eval", 16000, ["good evening", "hello"])),
                 "--distill", "0.5", "--lora-mlp", "--warmup-steps", "1", "--max-new-tokens", "5", "--output-dir", str(tmp_path / "out")]
    report = run_example("recover_whisper.py", arguments, monkeypatch)
    assert (report["metric"], report["variant_options"]) == ("wer", {"targets": "encoder", "window": 4})
    assert report["config"]["recipe"] == "lora" and report["control"] is None
    chosen = {key: report["config"][key] for key in ("distill_weight", "lora_mlp", "warmup_steps")}
    assert chosen == {"distill_weight": 0.5, "lora_mlp": True, "warmup_steps": 1}


def test_vit_under_accelerate_launch(tmp_path):
    """The launcher's one-process CPU run: the same script, no code change."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("the accelerate launcher is not installed (pip install accelerate)")
    images = image_folder(tmp_path / "images")
    arguments = ["--model", str(vit_checkpoint(tmp_path / "vit")), "--window", "2", "--train-data", str(images),
                 "--eval-data", str(images), "--augment", "--output-dir", str(tmp_path / "out"), *COMMON]
    subprocess.run([launcher, "launch", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", str(EXAMPLES / "recover_vit.py"), *arguments], check=True, timeout=300)
    report = json.loads((tmp_path / "out" / "recovery.json").read_text())
    assert (report["metric"], report["lower_is_better"]) == ("accuracy", False)
    assert report["variant_options"] == {"neighbourhood": "2d", "window": 2} and report["processes"] == 1


def test_vit_on_two_cpu_processes_under_torchrun(tmp_path):
    """Two real ranks: the report counts both, so the script trained as one DDP job, not two copies."""
    images = image_folder(tmp_path / "images")
    arguments = ["--model", str(vit_checkpoint(tmp_path / "vit")), "--window", "2", "--train-data", str(images),
                 "--eval-data", str(images), "--output-dir", str(tmp_path / "out"), *COMMON]
    run_on_two_cpu_ranks(EXAMPLES / "recover_vit.py", arguments)
    report = json.loads((tmp_path / "out" / "recovery.json").read_text())
    assert report["processes"] == 2 and report["steps"] == 2


def causal_lm_arguments(tmp_path: Path, *extra: str) -> list[str]:
    """The causal LM script on the tiny Llama, a window of 8 over training chunks of 64 tokens, LoRA."""
    corpus = tmp_path / "held-out.txt"
    corpus.write_text(TEXT * 3)
    return ["--model", str(llama_checkpoint(tmp_path / "llama")), "--train-data", str(text_folder(tmp_path / "train")),
            "--eval-data", str(corpus), "--window", "8", "--seq-len", "64", "--eval-tokens", "200",
            "--output-dir", str(tmp_path / "out"), *extra]


def perplexity_of_saved_adapter(tmp_path: Path, patch: tuple[str, dict] | None = None) -> float:
    """The held-out perplexity of a fresh copy of the tiny Llama with the run's final adapter loaded onto it
    (LoRA weights and the trained norms and embeddings), patched as ``patch`` says or left unpatched."""
    import torch

    from hf_efficient_attn import patch_model
    from hf_efficient_attn.eval.models import load_eval_model
    from hf_efficient_attn.train import load_adapters
    from hf_efficient_attn.train.recovery import task_setup

    loaded = load_eval_model(str(tmp_path / "llama"), device=torch.device("cpu"), dtype=torch.float32)
    metric = task_setup(loaded, str(tmp_path / "train"), str(tmp_path / "held-out.txt"), seq_len=64,
                        eval_options={"max_samples": None, "max_tokens": 200}).metric
    if patch is not None:
        patch_model(loaded.model, patch[0], **patch[1])
    return metric(load_adapters(loaded.model, tmp_path / "out" / "training" / "checkpoints" / "checkpoint_2" / "model"))


def test_causal_lm_fine_tuned_with_sliding_scored_as_other_attention(tmp_path, monkeypatch):
    """Trained with a window of 8, scored as the unpatched model, as the trained window and as the `full`
    variant: each score is that of the saved fine-tuned weights loaded afresh and patched (or not) that way."""
    arguments = causal_lm_arguments(tmp_path, "--evaluate-as", "unpatched", "--evaluate-as", "sliding,window=8",
                                    "--evaluate-as", "full", "--evaluate-as", "sliding,window=4,sink_tokens=2")
    report = run_example("recover_causal_lm.py", arguments, monkeypatch)
    unpatched, trained, full, narrower = report["evaluated_as"]
    assert [(row["variant"], row["options"]) for row in report["evaluated_as"]] == [
        ("unpatched", {}), ("sliding", {"window": 8}), ("full", {}), ("sliding", {"window": 4, "sink_tokens": 2})]

    independent = perplexity_of_saved_adapter(tmp_path)
    assert unpatched["fine_tuned"] == pytest.approx(independent, rel=1e-6)
    assert unpatched["zero_shot"] == report["baseline"] and unpatched["gap_closed"] is None
    assert full["fine_tuned"] == pytest.approx(independent, rel=1e-5)  # exact attention on another engine
    assert (trained["zero_shot"], trained["fine_tuned"]) == pytest.approx((report["zero_shot"], report["fine_tuned"]), rel=1e-6)
    assert trained["gap_closed"] == pytest.approx(report["gap_closed"], rel=1e-5)
    narrow = perplexity_of_saved_adapter(tmp_path, ("sliding", {"window": 4, "sink_tokens": 2}))
    assert narrower["fine_tuned"] == pytest.approx(narrow, rel=1e-6)
    expected_gap = (narrower["zero_shot"] - narrower["fine_tuned"]) / (narrower["zero_shot"] - report["baseline"])
    assert narrower["gap_closed"] == pytest.approx(expected_gap)
    # The attention really changed between the scores: the window of 8 is not exact on these texts.
    assert abs(independent - report["fine_tuned"]) > 1e-3 * independent and independent != report["baseline"]
    table = (tmp_path / "out" / "recovery.md").read_text()
    assert f"| llama | sliding (window=8) → scored as unpatched | lora | 2 | perplexity | {report['baseline']:.4g} |" in table


def test_causal_lm_over_three_seeds(tmp_path, monkeypatch):
    """``--seeds 0 1 2``: a report per seed in its folder, and the seeds' mean, sample std and range of every
    score and gap share, recomputed here from the per-seed reports."""
    import numpy as np

    arguments = causal_lm_arguments(tmp_path, "--control", "--seeds", "0", "1", "2", "--save-every", "1",
                                    "--evaluate-as", "sliding,window=4,sink_tokens=2")
    monkeypatch.setattr(sys, "argv", ["recover_causal_lm.py", *arguments, *COMMON])
    runpy.run_path(str(EXAMPLES / "recover_causal_lm.py"), run_name="__main__")
    out = tmp_path / "out"
    seeds = [json.loads((out / f"seed-{seed}" / "recovery.json").read_text()) for seed in (0, 1, 2)]
    assert [report["config"]["seed"] for report in seeds] == [0, 1, 2]
    for seed in (0, 1, 2):  # --save-every 1: both steps' checkpoints in each seed's run folder
        assert sorted(path.name for path in (out / "training" / f"seed-{seed}" / "checkpoints").iterdir()) == [
            "checkpoint_1", "checkpoint_2"]
    assert len({report["fine_tuned"] for report in seeds}) == 3  # the seed changed the data order and the adapters

    def gap(zero_shot, fine_tuned, target):
        return (zero_shot - fine_tuned) / (zero_shot - target)

    def spreads_of(rows, with_baseline):
        """The quantities of one attention per seed: ``rows`` hold zero_shot and fine_tuned, ``seeds`` the rest."""
        quantities = {"zero_shot": [row["zero_shot"] for row in rows], "fine_tuned": [row["fine_tuned"] for row in rows]}
        if with_baseline:
            quantities = {"baseline": [r["baseline"] for r in seeds], **quantities, "control": [r["control"] for r in seeds]}
        pairs = list(zip(rows, seeds, strict=True))
        quantities["gap_closed"] = [gap(row["zero_shot"], row["fine_tuned"], r["baseline"]) for row, r in pairs]
        quantities["gap_closed_vs_control"] = [gap(row["zero_shot"], row["fine_tuned"], r["control"]) for row, r in pairs]
        return quantities

    expected = {"sliding (window=8)": spreads_of(seeds, with_baseline=True),
                "scored as sliding (window=4, sink_tokens=2)": spreads_of([r["evaluated_as"][0] for r in seeds], False)}
    summary = json.loads((out / "recovery-seeds.json").read_text())["summary"]
    assert {attention: set(quantities) for attention, quantities in summary.items()} == \
        {attention: set(quantities) for attention, quantities in expected.items()}
    for attention, quantities in expected.items():
        for name, values in quantities.items():
            got = summary[attention][name]
            assert got["values"] == pytest.approx(values) and got["count"] == 3
            assert got["mean"] == pytest.approx(np.mean(values)) and got["std"] == pytest.approx(np.std(values, ddof=1))
            assert (got["min"], got["max"]) == pytest.approx((min(values), max(values)))
    table = (out / "recovery-seeds.md").read_text()
    fine = expected["sliding (window=8)"]["fine_tuned"]
    assert f"| sliding (window=8) | fine-tuned | {np.mean(fine):.4g} | {np.std(fine, ddof=1):.4g} |" in table


def test_resumed_seeds_keep_the_reports_of_finished_ones(tmp_path, monkeypatch, capsys):
    """``--seeds 0 1 --resume`` after a run stopped in seed 1: seed 0's report is kept as written (its seed is
    not run again), seed 1 runs; a changed training config runs every seed afresh."""
    arguments = causal_lm_arguments(tmp_path, "--control", "--seeds", "0", "1", "--save-every", "1",
                                    "--evaluate-as", "sliding,window=4")

    def run(*extra):
        monkeypatch.setattr(sys, "argv", ["recover_causal_lm.py", *arguments, *extra, *COMMON])
        runpy.run_path(str(EXAMPLES / "recover_causal_lm.py"), run_name="__main__")
        return capsys.readouterr().out

    out = tmp_path / "out"
    run()
    first = {seed: (out / f"seed-{seed}" / "recovery.json").read_text() for seed in (0, 1)}
    written = (out / "seed-0" / "recovery.json").stat().st_mtime_ns
    (out / "seed-1" / "recovery.json").unlink()  # seed 1 stopped before its report
    log = run("--resume")
    assert "seed 0: kept its finished report" in log and "seed 1: kept" not in log
    assert (out / "seed-0" / "recovery.json").stat().st_mtime_ns == written
    resumed = json.loads((out / "seed-1" / "recovery.json").read_text())
    assert resumed["fine_tuned"] == pytest.approx(json.loads(first[1])["fine_tuned"])  # from its final checkpoint
    summary = json.loads((out / "recovery-seeds.json").read_text())["summary"]["sliding (window=8)"]
    assert summary["fine_tuned"]["values"] == pytest.approx([json.loads(first[seed])["fine_tuned"] for seed in (0, 1)])
    log = run("--resume", "--lr", "0.002")
    assert "kept its finished report" not in log
    assert json.loads((out / "seed-0" / "recovery.json").read_text())["config"]["learning_rate"] == 0.002


@pytest.mark.parametrize(
    ("evaluate_as", "message"),
    [
        ("slidng,window=4", r"'slidng', which is not a variant; choose from .*'unpatched' for the model's own attention"),
        ("sliding,windw=4", r"'sliding' has no option 'windw'; its options: .*window"),
        ("sliding,4", r"'4' is not KEY=VALUE; options follow the variant as ,KEY=VALUE, e.g. .* --evaluate-as sliding,window=1024"),
        ("unpatched,window=4", r"'unpatched' is the model's own attention and takes no options"),
        ("sliding,window=0", r"evaluate_as sliding \(window=0\): .*window"),
        ("sliding,window=4,layers=[7]", r"evaluate_as sliding \(window=4, layers=\[7\]\) does not fit this model: .*out of range"),
    ],
)
def test_bad_evaluate_as_is_refused_before_training(tmp_path, monkeypatch, evaluate_as, message):
    import hf_efficient_attn.train.loop as loop
    from hf_efficient_attn.train import TrainError

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(loop, "train", no_training)
    arguments = causal_lm_arguments(tmp_path, "--evaluate-as", "unpatched", "--evaluate-as", evaluate_as)
    monkeypatch.setattr(sys, "argv", ["recover_causal_lm.py", *arguments, *COMMON])
    with pytest.raises(TrainError, match=message):
        runpy.run_path(str(EXAMPLES / "recover_causal_lm.py"), run_name="__main__")
    assert not (tmp_path / "out").exists()


def test_evaluate_as_is_checked_before_the_model_is_loaded(monkeypatch):
    import hf_efficient_attn.eval.models as models
    from hf_efficient_attn.train import TrainConfig, TrainError
    from hf_efficient_attn.train.recovery import run_recovery

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load_eval_model", no_loading)
    for entry, message in [(("sliding", 4), "are \\(variant, options\\) pairs such as \\('sliding', \\{'window': 1024\\}\\)"),
                           (("sliding", {"window": 4}), "lists sliding \\(window=4\\) twice")]:
        with pytest.raises(TrainError, match=message):
            run_recovery("unused", "sliding", {"window": 8}, TrainConfig(steps=1),
                         evaluate_as=[("sliding", {"window": 4, "sink_tokens": 0}), entry])


def test_seed_and_seeds_are_exclusive(capsys):
    from hf_efficient_attn.train.arguments import recovery_parser

    parser = recovery_parser("", model="smollm2-135m", variant="sliding", window=8, steps=2, learning_rate=1e-3, batch_size=2)
    with pytest.raises(SystemExit):
        parser.parse_args(["--seed", "1", "--seeds", "0", "1"])
    assert "not allowed with argument --seed" in capsys.readouterr().err


def test_vit_recovers_under_axial_attention(tmp_path, monkeypatch):
    """The task's default options (a 2-D window) belong to `sliding`; `axial` takes none of them."""
    images = image_folder(tmp_path / "images")
    arguments = ["--model", str(vit_checkpoint(tmp_path / "vit")), "--variant", "axial", "--train-data", str(images),
                 "--eval-data", str(images), "--recipe", "full", "--output-dir", str(tmp_path / "out")]
    report = run_example("recover_vit.py", arguments, monkeypatch)
    assert (report["variant"], report["variant_options"]) == ("axial", {})
    assert [row["step"] for row in report["history"] if row["metric"] is not None] == [0, 2]


def test_causal_lm_recovers_under_lsh(tmp_path, monkeypatch):
    corpus = tmp_path / "held-out.txt"
    corpus.write_text(TEXT * 3)
    arguments = ["--model", str(llama_checkpoint(tmp_path / "llama")), "--variant", "lsh", "--variant-option",
                 "bucket_size=16", "num_hashes=2", "--train-data", str(text_folder(tmp_path / "train")),
                 "--eval-data", str(corpus), "--seq-len", "64", "--eval-tokens", "200", "--output-dir", str(tmp_path / "out")]
    report = run_example("recover_causal_lm.py", arguments, monkeypatch)
    assert (report["variant"], report["variant_options"]) == ("lsh", {"bucket_size": 16, "num_hashes": 2})
    assert report["config"]["recipe"] == "lora" and report["fine_tuned"] == report["history"][-1]["metric"]
