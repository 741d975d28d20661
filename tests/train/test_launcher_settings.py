"""What the launcher and the user's accelerate setup decide: mixed precision, trackers, checkpoint folders."""

from __future__ import annotations

import pytest
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from tiny_models import tiny_llama
from training_batches import fresh_accelerate_state, token_samples  # noqa: F401

from hf_efficient_attn import patch_model
from hf_efficient_attn.train import TrainConfig, TrainError, train
from hf_efficient_attn.train.runtime import accelerator_for, mixed_precision_of, project_configuration


def quick(**overrides) -> TrainConfig:
    return TrainConfig(**{"steps": 2, "batch_size": 4, "log_every": 1, "progress": False, **overrides})


def test_the_launchers_mixed_precision_reaches_the_accelerator(monkeypatch):
    """``accelerate launch --mixed_precision bf16`` sets ACCELERATE_MIXED_PRECISION; the default config obeys it."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    config = quick()
    assert config.mixed_precision is None and mixed_precision_of(config) == "bf16"
    assert accelerator_for(config).mixed_precision == "bf16"


def test_an_explicit_mixed_precision_overrides_the_launcher(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    config = quick(mixed_precision="no")
    assert mixed_precision_of(config) == "no" and accelerator_for(config).mixed_precision == "no"


def test_without_a_launcher_training_is_full_precision(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert accelerator_for(quick()).mixed_precision == "no"


class RecordingTracker(GeneralTracker):
    """A tracker that keeps what it is given, registered with accelerate under its name."""

    name = "recording"
    requires_logging_directory = False
    rows: list[tuple[dict, int | None]] = []
    settings: dict = {}

    def __init__(self, run_name: str, **kwargs):
        super().__init__()
        self.run_name = run_name

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict) -> None:
        RecordingTracker.settings = dict(values)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        RecordingTracker.rows.append((dict(values), step))


def test_logged_rows_reach_the_trackers_named_in_report_to():
    from accelerate.tracking import register_tracker_class

    register_tracker_class(RecordingTracker)
    RecordingTracker.rows = []
    result = train(patch_model(tiny_llama(), "sliding", window=6), token_samples(97), quick(report_to="recording"))
    assert [step for _, step in RecordingTracker.rows] == [row["step"] for row in result.history] == [1, 2]
    assert RecordingTracker.rows[-1][0]["loss"] == pytest.approx(result.history[-1]["loss"])
    assert RecordingTracker.settings["steps"] == 2 and RecordingTracker.settings["report_to"] == "('recording',)"


def test_unknown_and_uninstalled_trackers_are_refused(tmp_path):
    with pytest.raises(TrainError, match="unknown tracker 'tensorbord'"):
        quick(report_to=("tensorbord",))
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(TrainError, match="tensorboard, whose package is not installed"):
            accelerator_for(quick(report_to=("tensorboard",)))
    else:
        assert accelerator_for(quick(report_to=("tensorboard",), output_dir=str(tmp_path))).log_with


def test_an_accelerator_that_would_save_elsewhere_is_refused(tmp_path):
    config = quick(output_dir=str(tmp_path))
    with pytest.raises(TrainError, match="does not write its checkpoints to output_dir"):
        train(patch_model(tiny_llama(), "sliding", window=6), token_samples(97), config, accelerator=Accelerator())


def test_an_accelerator_built_with_the_runs_project_configuration_is_used(tmp_path):
    config = quick(output_dir=str(tmp_path))
    accelerator = Accelerator(project_config=project_configuration(config))
    result = train(patch_model(tiny_llama(), "sliding", window=6), token_samples(97), config, accelerator=accelerator)
    assert result.checkpoint == str(tmp_path / "checkpoints" / "checkpoint_2")
