"""Read a CTranslate2 ``model.bin``: the spec's name, its revision, every variable and the aliases.

The file (binary format version 6, little-endian, as CTranslate2's ``ModelSpec`` writes it):

    u32 format version (6)
    string spec name (e.g. "WhisperSpec"), u32 spec revision
    u32 variable count, then per variable:
        string name, u8 rank, u32 × rank dims, u8 dtype, u32 byte count, raw data
    u32 alias count, then per alias: string alias, string name of the variable it stands for

A string is a u16 byte count (the terminating NUL included), the UTF-8 bytes and a NUL. Scalars are
variables of rank 0 (flags such as ``pre_norm``, head counts). Quantized weights come with separate
``*_scale`` variables; this reader returns them as they are and leaves their meaning to the caller.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import torch

FORMAT_VERSION = 6

DTYPES: dict[int, torch.dtype] = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
"""CTranslate2's ``DataType`` ids (include/ctranslate2/types.h) and the torch dtype of each."""


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands."""


@dataclass(frozen=True)
class CT2Model:
    """The contents of a ``model.bin``: ``variables`` by name; ``aliases`` map a name to the variable it shares."""

    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.offset, self.path = data, 0, path

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise CT2FormatError(f"{self.path} ends early at byte {len(self.data)}: a truncated or corrupt file")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.unpack("H"))
        if not raw.endswith(b"\0"):
            raise CT2FormatError(f"{self.path}: a string at byte {self.offset - len(raw)} is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def read_ct2_model(path: str | Path) -> CT2Model:
    """Read every variable of the CTranslate2 model file ``path`` into CPU tensors of its stored dtype."""
    path = Path(path)
    reader = _Reader(path.read_bytes(), path)
    version = reader.unpack("I")
    if version != FORMAT_VERSION:
        raise CT2FormatError(
            f"{path} has CTranslate2 binary format version {version}; only version {FORMAT_VERSION} is "
            "supported (re-convert the model with a current ctranslate2 converter)"
        )
    spec, revision = reader.string(), reader.unpack("I")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        shape = [reader.unpack("I") for _ in range(reader.unpack("B"))]
        dtype_id, num_bytes = reader.unpack("B"), reader.unpack("I")
        if dtype_id not in DTYPES:
            raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
        dtype = DTYPES[dtype_id]
        expected = torch.Size(shape).numel() * dtype.itemsize
        if num_bytes != expected:
            raise CT2FormatError(f"{path}: variable {name!r} holds {num_bytes} bytes, {shape} of {dtype} needs {expected}")
        raw = bytearray(reader.take(num_bytes))
        variables[name] = torch.frombuffer(raw, dtype=dtype).reshape(shape) if raw else torch.empty(shape, dtype=dtype)
    aliases = {}
    for _ in range(reader.unpack("I")):
        alias, target = reader.string(), reader.string()
        aliases[alias] = target
    if reader.offset != len(reader.data):
        raise CT2FormatError(f"{path}: {len(reader.data) - reader.offset} bytes follow the last alias")
    return CT2Model(spec, revision, variables, aliases)
