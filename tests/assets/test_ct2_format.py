"""The CTranslate2 model-file reader against files written by the test writer."""

from __future__ import annotations

import pytest
import torch
from ct2_writer import write_ct2_file

from hf_efficient_attn.assets.ct2_format import CT2FormatError, read_ct2_model


def test_every_dtype_scalars_and_aliases_round_trip(tmp_path):
    variables = {
        "a/weight": torch.randn(3, 5),
        "a/half": torch.randn(7).half(),
        "a/brain": torch.randn(2, 2).bfloat16(),
        "flags/int8": torch.tensor(-3, dtype=torch.int8),
        "flags/int16": torch.tensor(6, dtype=torch.int16),
        "flags/int32": torch.tensor([1, -2, 3], dtype=torch.int32),
        "empty": torch.empty(0, 4),
    }
    write_ct2_file(tmp_path / "model.bin", variables, {"b/weight": "a/weight"}, spec="TestSpec", revision=9)
    model = read_ct2_model(tmp_path / "model.bin")
    assert (model.spec, model.revision, model.aliases) == ("TestSpec", 9, {"b/weight": "a/weight"})
    assert list(model.variables) == list(variables)
    for name, tensor in variables.items():
        assert model.variables[name].dtype == tensor.dtype and torch.equal(model.variables[name], tensor), name


def test_unsupported_version_is_refused(tmp_path):
    write_ct2_file(tmp_path / "model.bin", {"x": torch.zeros(1)}, version=5)
    with pytest.raises(CT2FormatError, match="version 5; only version 6"):
        read_ct2_model(tmp_path / "model.bin")


def test_truncated_and_padded_files_are_refused(tmp_path):
    write_ct2_file(tmp_path / "model.bin", {"x": torch.randn(4, 4)})
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:-20])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2_model(tmp_path / "short.bin")
    (tmp_path / "long.bin").write_bytes(data + b"\0\0")
    with pytest.raises(CT2FormatError, match="2 bytes follow"):
        read_ct2_model(tmp_path / "long.bin")


def test_unknown_dtype_is_refused(tmp_path):
    write_ct2_file(tmp_path / "model.bin", {"x": torch.zeros(2, dtype=torch.int8)})
    data = bytearray((tmp_path / "model.bin").read_bytes())
    dtype_offset = data.index(b"x\0") + 2 + 1 + 4  # name, rank, one dim
    data[dtype_offset] = 42
    (tmp_path / "model.bin").write_bytes(bytes(data))
    with pytest.raises(CT2FormatError, match="unknown dtype id 42"):
        read_ct2_model(tmp_path / "model.bin")
