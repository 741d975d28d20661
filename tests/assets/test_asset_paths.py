"""Where assets live, and what `asset_path` says when one is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_efficient_attn.assets import CACHE_ENV, AssetNotFoundError, asset_path, cache_dir
from hf_efficient_attn.assets.paths import building


def test_cache_dir_default_env_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert cache_dir() == Path("~/.cache/hf-efficient-attn/assets").expanduser()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"


def test_missing_asset_names_the_command_that_builds_it(tmp_path):
    with pytest.raises(AssetNotFoundError) as error:
        asset_path("whisper-tiny", tmp_path)
    message = str(error.value)
    assert "has not been built" in message
    assert "pip install 'hf-efficient-attn[assets]'" in message
    assert f"hf-efficient-attn fetch-assets --only whisper --cache-dir {tmp_path}" in message


def test_environment_cache_is_used_and_not_repeated_as_a_flag(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with pytest.raises(AssetNotFoundError, match=r"fetch-assets --only vision$"):
        asset_path("vit-mnist")


def test_unknown_asset_lists_the_known_ones(tmp_path):
    with pytest.raises(KeyError, match="known assets: images-mnist, images-mnist-train, smollm2-135m, speech-en"):
        asset_path("gpt-5", tmp_path)


def test_an_interrupted_build_is_refused_and_a_finished_one_found(tmp_path):
    with pytest.raises(RuntimeError), building(tmp_path, "text-en") as folder:
        (folder / "a.txt").write_text("half")
        raise RuntimeError("interrupted")
    with pytest.raises(AssetNotFoundError, match="is incomplete"):
        asset_path("text-en", tmp_path)
    with building(tmp_path, "text-en") as folder:
        (folder / "b.txt").write_text("whole")
    assert asset_path("text-en", tmp_path) == tmp_path / "text-en"
    assert sorted(p.name for p in (tmp_path / "text-en").iterdir()) == ["b.txt"]  # the old copy is gone, no marker inside
