"""A run interrupted after a checkpoint and resumed continues exactly like an uninterrupted one."""

from __future__ import annotations

import pytest
from tiny_models import tiny_llama
from training_batches import fresh_accelerate_state, losses, token_samples  # noqa: F401

from hf_efficient_attn import patch_model
from hf_efficient_attn.train import TrainConfig, train
from hf_efficient_attn.train.checkpoint import checkpoints


class Interrupted(Exception):
    pass


def config(output_dir, **overrides) -> TrainConfig:
    base = dict(steps=6, batch_size=2, log_every=1, learning_rate=1e-2, lora_dropout=0.2, warmup_steps=1)
    return TrainConfig(
        **{**base, "save_every": 3, "output_dir": str(output_dir), "progress": False, **overrides}
    )


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    data = token_samples(97, distinct=True)
    uninterrupted = train(patch_model(tiny_llama(), "sliding", window=6), data, config(tmp_path / "a"))

    model = patch_model(tiny_llama(), "sliding", window=6)
    calls = []

    def stop_in_step_five(module, args, kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise Interrupted

    handle = model.register_forward_pre_hook(stop_in_step_five, with_kwargs=True)
    with pytest.raises(Interrupted):
        train(model, data, config(tmp_path / "b"))
    handle.remove()
    assert [path.name for path in checkpoints(str(tmp_path / "b"))] == ["checkpoint_3"]

    resumed = train(patch_model(tiny_llama(), "sliding", window=6), data, config(tmp_path / "b", resume=True))
    assert [row["step"] for row in resumed.history] == list(range(1, 7))
    assert losses(resumed) == pytest.approx(losses(uninterrupted), abs=1e-6, rel=0)
    assert resumed.checkpoint.endswith("checkpoint_6")


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    data = token_samples(97)
    train(patch_model(tiny_llama(), "sliding", window=6), data, config(tmp_path, steps=4, save_every=1))
    assert [path.name for path in checkpoints(str(tmp_path))] == ["checkpoint_3", "checkpoint_4"]


def test_resume_without_a_checkpoint_starts_afresh(tmp_path):
    result = train(
        patch_model(tiny_llama(), "sliding", window=6),
        token_samples(97),
        config(tmp_path, steps=2, resume=True),
    )
    assert [row["step"] for row in result.history] == [1, 2]
