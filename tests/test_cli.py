"""The `hf-efficient-attn` command line: help answers at once, without torch, in plain text."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from hf_efficient_attn.cli import COMMANDS, build_parser, main, plain_text

HEAVY_MODULES = ("torch", "transformers", "datasets")


def test_building_the_parser_imports_neither_torch_nor_transformers():
    check = (
        "import sys; import hf_efficient_attn.cli as cli; cli.build_parser(); "
        f"print(sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)])
def test_help_answers_within_a_second(command):
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "hf_efficient_attn.cli", *command, "--help"],
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert result.returncode == 0 and "usage: hf-efficient-attn" in result.stdout
    assert seconds < 1.0, f"hf-efficient-attn {' '.join(command)} --help took {seconds:.2f} s"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_shows_no_docstring_markup(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert "`" not in shown and f"hf-efficient-attn {command}" in shown


def test_plain_text_drops_literal_and_reference_quotes():
    assert plain_text("Each ``--variant`` of `hf-efficient-attn eval`, e.g. ``4``.") == (
        "Each --variant of hf-efficient-attn eval, e.g. 4."
    )


def test_every_command_parses_to_its_own_name():
    parser = build_parser()
    arguments = {"demo": ["demo"], "eval": ["eval"], "fetch-assets": ["fetch-assets"], "recover": ["recover", "vit"]}
    assert {parser.parse_args(arguments[name]).command for name in COMMANDS} == set(COMMANDS)


def test_the_package_imports_its_public_names_on_first_use():
    check = (
        "import sys; import hf_efficient_attn as package; before = 'torch' in sys.modules; "
        "print(before, all(callable(getattr(package, name)) for name in package.__all__), 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True", "True"]
