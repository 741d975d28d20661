"""``hf-efficient-attn recover``: every TrainConfig field is a flag, the flags reach the config, and the
command runs from the installed entry point and under ``accelerate launch -m``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from recovery_checkpoints import TEXT, image_folder, llama_checkpoint, text_folder, vit_checkpoint

from hf_efficient_attn.train import TrainConfig
from hf_efficient_attn.train.arguments import RUN_FIELDS, config_from_args
from hf_efficient_attn.train.command import TASKS, add_recover_command


def task_parser(task: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-efficient-attn")
    add_recover_command(parser.add_subparsers(dest="command", required=True))
    recover = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    tasks = next(a for a in recover.choices["recover"]._actions if isinstance(a, argparse._SubParsersAction))
    return tasks.choices[task]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_config_field_is_a_flag_of_its_own_name(task):
    flags = {option for action in task_parser(task)._actions for option in action.option_strings}
    for field in dataclasses.fields(TrainConfig):
        if field.name not in RUN_FIELDS:
            assert f"--{field.name.replace('_', '-')}" in flags, field.name
    assert {"--seed", "--seeds", "--output-dir", "--variant-option"} <= flags


def test_flags_reach_the_config():
    args = task_parser("causal-lm").parse_args([
        "--lora-rank", "4", "--lora-dropout", "0.1", "--no-train-norms", "--weight-decay", "0.01",
        "--transfer-learning-rate", "0.01", "--max-grad-norm", "0.5", "--log-every", "5", "--keep-checkpoints", "3",
        "--lr", "0.002", "--mixed-precision", "bf16", "--report-to", "wandb", "--seed", "7",
    ])
    expected = TrainConfig(steps=200, learning_rate=0.002, batch_size=4, lora_rank=4, lora_alpha=8, lora_dropout=0.1,
                           train_norms=False, weight_decay=0.01, transfer_learning_rate=0.01, max_grad_norm=0.5,
                           log_every=5, keep_checkpoints=3, mixed_precision="bf16", report_to=("wandb",), seed=7,
                           output_dir=str(Path("recovery") / "training"))
    assert config_from_args(args) == expected


@pytest.mark.parametrize("seeds", [[], ["--seeds", "0", "1"]], ids=["one-run", "seeds"])
def test_checkpoint_flags_take_the_run_folder_under_the_output_dir(tmp_path, seeds):
    """``--save-every`` and ``--resume`` need a run folder: ``<output-dir>/training``, where the report's
    training run writes (`run_seeds` puts each seed in ``seed-<n>`` under it); they were refused as if
    none were given."""
    args = task_parser("whisper").parse_args(["--save-every", "20", "--resume", "--output-dir", str(tmp_path / "out"), *seeds])
    config = config_from_args(args)
    assert (config.save_every, config.resume, config.output_dir) == (20, True, str(tmp_path / "out" / "training"))


def test_defaults_leave_precision_to_the_launcher_and_alpha_at_twice_the_rank():
    config = config_from_args(task_parser("vit").parse_args(["--lora-rank", "8"]))
    assert (config.mixed_precision, config.lora_alpha, config.learning_rate, config.batch_size) == (None, 16, 1e-3, 64)
    assert config_from_args(task_parser("vit").parse_args(["--lora-alpha", "3"])).lora_alpha == 3


def test_recover_runs_from_the_command_line(tmp_path):
    from hf_efficient_attn.cli import main

    corpus = tmp_path / "held-out.txt"
    corpus.write_text(TEXT * 3)
    out = tmp_path / "out"
    status = main(["recover", "causal-lm", "--model", str(llama_checkpoint(tmp_path / "llama")),
                   "--train-data", str(text_folder(tmp_path / "train")), "--eval-data", str(corpus), "--window", "8",
                   "--seq-len", "64", "--eval-tokens", "200", "--steps", "2", "--batch-size", "2", "--no-progress",
                   "--lora-dropout", "0.1", "--output-dir", str(out)])
    report = json.loads((out / "recovery.json").read_text())
    assert status == 0 and report["config"]["lora_dropout"] == 0.1 and report["steps"] == 2
    assert (out / "training" / "checkpoints" / "checkpoint_2" / "model").is_dir()


def test_recover_under_accelerate_launch_as_a_module(tmp_path):
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert launcher is not None, "the train extra installs accelerate's launcher"
    images = image_folder(tmp_path / "images")
    subprocess.run([launcher, "launch", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "bf16",
                    "--dynamo_backend", "no", "-m", "hf_efficient_attn.cli", "recover", "vit",
                    "--model", str(vit_checkpoint(tmp_path / "vit")), "--window", "2", "--train-data", str(images),
                    "--eval-data", str(images), "--steps", "2", "--batch-size", "2", "--no-progress",
                    "--output-dir", str(tmp_path / "out")], check=True, timeout=300)
    report = json.loads((tmp_path / "out" / "recovery.json").read_text())
    assert report["metric"] == "accuracy" and report["config"]["mixed_precision"] == "bf16"  # the launcher's
    assert report["processes"] == 1


def test_variant_options_take_one_spelling_in_recover_and_eval():
    """``--variant-option`` takes several pairs in recover as in eval; the plural spelling stays an alias."""
    from hf_efficient_attn.cli import build_parser

    recover = task_parser("causal-lm").parse_args(["--variant-option", "sink_tokens=4", "layers=[0]",
                                                   "--variant-options", "window=8"])
    assert recover.variant_option == ["sink_tokens=4", "layers=[0]", "window=8"]
    evaluate = build_parser().parse_args(["eval", "--variant-option", "sink_tokens=4", "targets=encoder"])
    assert evaluate.variant_options == ["sink_tokens=4", "targets=encoder"]
