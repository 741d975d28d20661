"""What each attention backend computes exactly, as data, and what one call needs of a backend.

Every call under an exact pattern (`flash`, `sliding`, `sparse`) asks for a set of `Need` s, read off its
shapes, the pattern and the host facts of its context (`call_needs`). Each backend states the needs it
runs exactly (`Capabilities`, the table `BACKEND_CAPABILITIES`); `Capabilities.refusal` says which need,
dtype or device it lacks for a call. The dispatch rule (`dispatch.choose`) asks the table which backends
may run a call and takes the fastest of those. A backend's own check adds what a feature table cannot
state: shape limits and combinations of features (`backends.cudnn_sdpa.supports`, `backends.fa4.supports`,
`kernels.supports`, `fused_path.plan`).

Needs are counted only where they restrict the call: a window that covers every key the call has needs
nothing, and so neither do its sinks; such a call is plain attention, which SDPA runs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from .context import AttentionContext
from .fused_path import KernelMask
from .grad_mode import records_grad


class Need(enum.Enum):
    """One thing a call asks of a backend; the value names it in refusals and in the docs' table."""

    CAUSAL = "a causal mask"
    DECODE = "queries aligned to the last keys of a cache (decoding, chunked prefill)"
    STATIC_CACHE = "a static cache's slots (positions known on the device only)"
    WINDOW = "a window band narrower than the keys"
    SINKS = "sink tokens under a window or layout"
    GLOBALS = "global tokens under a window or layout"
    BLOCK_LAYOUT = "a block layout that skips blocks"
    NEIGHBOURHOOD = "a 2-D neighbourhood"
    NATIVE_WINDOW = "the model's own sliding window, narrower than the keys"
    KEY_PADDING = "a padding mask"
    PACKED_DOCUMENTS = "several documents packed per row"
    CALLER_MASK = "a 4-D attention mask from the caller"
    TRIMMED_CACHE = "a bounded cache that dropped keys between its sinks and its window"
    GROUPED_HEADS = "grouped-query heads"
    BACKWARD = "gradients"
    DROPOUT = "attention dropout"


NEEDS_IN_ORDER: tuple[Need, ...] = tuple(Need)
"""Every need in `Need`'s order, as a tuple: a traced call walks it (iterating the enum class itself does
not trace under torch.compile on torch 2.11)."""

PATTERN_NEEDS = frozenset({Need.WINDOW, Need.SINKS, Need.GLOBALS, Need.BLOCK_LAYOUT, Need.NEIGHBOURHOOD,
                           Need.NATIVE_WINDOW})
"""The needs a pattern imposes (the rest come from the call's context and tensors)."""


@dataclass(frozen=True)
class CallNeeds:
    """What one call asks of a backend: its needs, its dtype and its device type."""

    needs: frozenset[Need]
    dtype: torch.dtype
    device_type: str


@dataclass(frozen=True)
class Capabilities:
    """What one backend runs exactly.

    Attributes:
        name: the backend's name (``backend=`` takes it where it can be forced).
        title: how refusals name it.
        runs: the needs it computes exactly, alone and together (combinations it refuses are its own
            check's to state).
        dtypes: the dtypes it takes.
        devices: the device types it runs on.
        head_dims: its head sizes, as the docs state them (its own check enforces them).
    """

    name: str
    title: str
    runs: frozenset[Need]
    dtypes: frozenset[torch.dtype]
    devices: frozenset[str]
    head_dims: str

    def refusal(self, call: CallNeeds) -> str | None:
        """None when the table lets this backend run the call, else what it lacks (the first missing
        need in `Need`'s order, then the device, then the dtype)."""
        for need in NEEDS_IN_ORDER:
            if need in call.needs and need not in self.runs:
                return f"{self.title} cannot run {need.value}"
        if call.device_type not in self.devices:
            return f"{self.title} runs on {_listed(sorted(self.devices))} only, not on {call.device_type}"
        if call.dtype not in self.dtypes:
            return f"{call.dtype}: {self.title} runs {_listed(_dtype_names(self.dtypes))} only; cast to one of them"
        return None


_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_EVERY_NEED = frozenset(Need)

SDPA = Capabilities(
    name="sdpa",
    title="torch SDPA without a pattern mask",
    runs=_EVERY_NEED - PATTERN_NEEDS - {Need.PACKED_DOCUMENTS},
    dtypes=_FLOATS,
    devices=frozenset({"cpu", "cuda"}),
    head_dims="any (its fused CUDA kernels up to 256)",
)
"""torch's SDPA (cuDNN, FlashAttention, memory-efficient or CPU kernels): exact for calls whose pattern
restricts nothing, with padding, a caller's mask, a static cache's positions and causality that
``is_causal`` cannot state as one boolean mask (`sdpa_calls.sdpa_attention`)."""

CUDNN = Capabilities(
    name="cudnn",
    title="cuDNN attention",
    runs=frozenset({Need.CAUSAL, Need.DECODE, Need.WINDOW, Need.GROUPED_HEADS, Need.BACKWARD}),
    dtypes=frozenset({torch.float16, torch.bfloat16}),
    devices=frozenset({"cuda"}),
    head_dims="multiples of 8 up to 128 (256 on Hopper)",
)
"""cuDNN's fused attention through ``nvidia-cudnn-frontend`` (`backends.cudnn_sdpa`, the ``cudnn`` extra):
causal masks and diagonal bands, aligned to the last keys."""

FA4 = Capabilities(
    name="fa4",
    title="FlashAttention-4",
    runs=frozenset({Need.CAUSAL, Need.DECODE, Need.WINDOW, Need.GROUPED_HEADS, Need.BACKWARD}),
    dtypes=frozenset({torch.float16, torch.bfloat16}),
    devices=frozenset({"cuda"}),
    head_dims="64, 96, 128 (Hopper)",
)
"""FlashAttention-4's Hopper kernels (`backends.fa4`, the ``fa4`` extra): causal masks and windows aligned
to the last keys, bidirectional windows with as many queries as keys."""

TRITON = Capabilities(
    name="triton",
    title="the Triton kernels",
    runs=_EVERY_NEED - {Need.CALLER_MASK, Need.STATIC_CACHE, Need.DROPOUT},
    dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
    devices=frozenset({"cuda", "cpu"}),
    head_dims="32, 64, 80, 96, 128 (the 2-D neighbourhood kernel: 1 to 256)",
)
"""Our kernels (`kernels`): every pattern, with padding, packed documents and bounded caches; on the CPU
under ``TRITON_INTERPRET=1`` only. Some combinations are refused by `fused_path.plan` (sinks, globals or
layouts with left padding or with packed documents)."""

REFERENCE = Capabilities(
    name="reference",
    title="the chunked engine",
    runs=_EVERY_NEED,
    dtypes=_FLOATS,
    devices=frozenset({"cpu", "cuda"}),
    head_dims="any",
)
"""The chunked engine (`masked.masked_attention`): SDPA per chunk of queries over the keys the pattern
allows, under the pattern's mask; the exact path for every call."""

BACKEND_CAPABILITIES: tuple[Capabilities, ...] = (SDPA, CUDNN, FA4, TRITON, REFERENCE)


def pattern_needs(pattern: KernelMask, context: AttentionContext, q_len: int, k_len: int) -> frozenset[Need]:
    """What the pattern restricts in this call: nothing when it lets every query see every key that
    causality, padding and a caller's mask allow (the call is then plain exact attention).

    Counted in the kernels' index space (`fused_path`): with queries aligned to the last keys, the
    farthest pair a causal call has is the last query and the first key the sinks (or a bounded cache's
    kept prefix) do not cover. A left-padded row's sinks start after its padding, closer to the queries,
    so the sinks' bound holds for it too and needs no host fact about the padding: under
    ``torch.compile``, where whether a row is left-padded stays on the device, a static cache's decoding
    step over its sinks and window is still plain attention. A kept prefix is sized by the batch's
    longest padding, so a row padded less holds tokens past its sinks there: it counts only without
    left padding.
    """
    needs = set()
    if pattern.block_layout is not None and not pattern.layout_is_dense:
        needs.add(Need.BLOCK_LAYOUT)
    if pattern.neighbourhood is not None:
        needs.add(Need.NEIGHBOURHOOD)
    native = context.native_window
    if native is not None and native < (k_len if context.causal else max(q_len, k_len)):
        needs.add(Need.NATIVE_WINDOW)
    sinks = 0
    if context.causal and context.trimmed_prefix is None:
        sinks = pattern.sink_tokens
    elif context.causal and not context.left_padded:
        sinks = context.trimmed_prefix
    reach = (k_len - sinks) if context.causal else max(q_len, k_len)
    left, right = pattern.window
    if (left is not None and left < reach) or (not context.causal and right is not None and right < reach):
        needs.add(Need.WINDOW)
    if needs:
        needs |= {need for need, present in ((Need.SINKS, pattern.sink_tokens), (Need.GLOBALS, pattern.global_tokens))
                  if present}
    return frozenset(needs)


def call_needs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext, pattern: KernelMask
) -> CallNeeds:
    """Everything this call asks of a backend (host facts only: safe under tracing)."""
    q_len, k_len = query.shape[-2], key.shape[-2]
    needs = set(pattern_needs(pattern, context, q_len, k_len))
    facts = (
        (Need.CAUSAL, context.causal),
        (Need.DECODE, context.causal and q_len != k_len),
        (Need.KEY_PADDING, context.key_padding is not None),
        (Need.PACKED_DOCUMENTS, context.query_documents is not None),
        (Need.CALLER_MASK, context.dense_mask is not None),
        (Need.STATIC_CACHE, context.static),
        (Need.TRIMMED_CACHE, context.trimmed_prefix is not None),
        (Need.GROUPED_HEADS, query.shape[1] != key.shape[1]),
        (Need.BACKWARD, records_grad(query, key, value)),
        (Need.DROPOUT, context.dropout > 0),
    )
    needs |= {need for need, present in facts if present}
    return CallNeeds(frozenset(needs), query.dtype, query.device.type)


def capability_table() -> str:
    """The table as Markdown (kept in docs/kernels-and-backends.md; a test checks it is current)."""
    header = "| call needs | " + " | ".join(f"`{backend.name}`" for backend in BACKEND_CAPABILITIES) + " |"
    lines = [header, "|---|" + ":---:|" * len(BACKEND_CAPABILITIES)]
    for need in Need:
        marks = " | ".join("yes" if need in backend.runs else "-" for backend in BACKEND_CAPABILITIES)
        lines.append(f"| {need.value} | {marks} |")
    rows = (
        ("dtypes", lambda b: ", ".join(_dtype_names(b.dtypes))),
        ("devices", lambda b: ", ".join(sorted(b.devices))),
        ("head sizes", lambda b: b.head_dims),
    )
    for title, cell in rows:
        lines.append(f"| {title} | " + " | ".join(cell(backend) for backend in BACKEND_CAPABILITIES) + " |")
    return "\n".join(lines)


def _dtype_names(dtypes: frozenset[torch.dtype]) -> list[str]:
    """The dtypes' short names, narrowest first."""
    order = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    return [str(dtype).removeprefix("torch.") for dtype in order if dtype in dtypes]


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
