"""Relaunching compiled kernels: a call goes straight to the compiled kernel only when everything Triton's
specialisation reads is what it was when Triton compiled and launched that kernel; on the GPU the
relaunched kernels compute what the first launch did."""

from __future__ import annotations

import types
import weakref

import pytest
import torch
from kernel_reference import DEVICE, reference, rel_err, tolerance

from hf_efficient_attn.kernels import decode_attention, fused_attention, relaunch
from hf_efficient_attn.kernels.relaunch import Relauncher


class FakeCompiled:
    def __init__(self, launches: list):
        self.launches = launches
        self.function = "function"
        self.packed_metadata = "metadata"

    def run(self, *launch_args):
        self.launches.append(launch_args)


class FakeJit:
    """A stand-in for a JIT function of ``(X, n, scale, BLOCK: constexpr)``."""

    def __init__(self):
        self.params = [types.SimpleNamespace(name=n, is_constexpr=n == "BLOCK") for n in ("X", "n", "scale", "BLOCK")]
        self.compiled_runs: list = []
        self.relaunches: list = []
        self.plain: list = []

    def run(self, *args, grid, warmup, **kwargs):
        self.compiled_runs.append((args, grid, kwargs))
        return FakeCompiled(self.relaunches)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.plain.append((grid, args, kwargs))


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(relaunch, "available", lambda: True)
    monkeypatch.setattr(relaunch, "_hooks_active", lambda: False)
    monkeypatch.setattr(relaunch, "_current_device", lambda: 0)
    monkeypatch.setattr(relaunch, "_current_stream", lambda device: 7)


def test_a_seen_call_goes_to_the_compiled_kernel_with_every_parameter_in_order(fake_gpu):
    fn = FakeJit()
    launch = Relauncher(fn)
    x = torch.zeros(64)
    grid = lambda meta: (4 // meta["BLOCK"] * 8, 3)  # noqa: E731
    launch(grid, (x, 64, 0.5), {"BLOCK": 2, "num_warps": 4})
    assert len(fn.compiled_runs) == 1 and fn.relaunches == []
    y = torch.ones(64)
    launch(grid, (y, 64, 0.5), {"BLOCK": 2, "num_warps": 4})
    assert len(fn.compiled_runs) == 1
    (launched,) = fn.relaunches
    assert launched[:7] == (16, 3, 1, 7, "function", "metadata", None)
    assert launched[7:9] == (None, None)
    assert launched[9] is y and launched[10:] == (64, 0.5, 2)


@pytest.mark.parametrize(
    "changed",
    [
        lambda x: ((x, 65, 0.5), {"BLOCK": 2}),  # a scalar's divisibility by 16
        lambda x: ((x, 1, 0.5), {"BLOCK": 2}),  # a scalar equal to 1
        lambda x: ((x, 2**32, 0.5), {"BLOCK": 2}),  # a scalar's type (64-bit)
        lambda x: ((x, 64, 2), {"BLOCK": 2}),  # an int where a float was
        lambda x: ((x.double(), 64, 0.5), {"BLOCK": 2}),  # a tensor's dtype
        lambda x: ((x[1:], 64, 0.5), {"BLOCK": 2}),  # a tensor's alignment
        lambda x: ((x, 64, 0.5), {"BLOCK": 4}),  # a constexpr
        lambda x: ((x, 64, 0.5), {"BLOCK": 2, "num_warps": 8}),  # a compile option
    ],
)
def test_anything_triton_specialises_on_sends_the_call_through_triton_again(fake_gpu, changed):
    fn = FakeJit()
    launch = Relauncher(fn)
    x = torch.zeros(64)
    launch((1,), (x, 64, 0.5), {"BLOCK": 2})
    args, kwargs = changed(x)
    launch((1,), args, kwargs)
    assert len(fn.compiled_runs) == 2 and fn.relaunches == []
    launch((1,), args, kwargs)
    assert len(fn.relaunches) == 1


def test_scalars_triton_compiles_alike_relaunch_and_a_positional_constexpr_keeps_its_value(fake_gpu):
    """A decoding step's key count and cache strides change at every step: values in the same class of
    Triton's specialisation reuse the compiled kernel (exact values where the release does not expose its
    specialisation); a constexpr passed by position is keyed by its value."""
    fn = FakeJit()
    launch = Relauncher(fn)
    x = torch.zeros(64)
    for n, scale in ((64, 0.5), (128, 0.25), (4096, 0.125)):
        launch((1,), (x, n, scale), {"BLOCK": 2})
    assert len(fn.compiled_runs) == (1 if relaunch._SPECIALISE is not None else 3)
    assert [launched[10:12] for launched in fn.relaunches] == ([(128, 0.25), (4096, 0.125)]
                                                               if relaunch._SPECIALISE is not None else [])
    positional = Relauncher(FakeJit())
    for block in (16, 32, 16):
        positional((1,), (x, 64, 0.5, block), {})
    assert len(positional.fn.compiled_runs) == 2 and len(positional.fn.relaunches) == 1


def test_keys_hold_exact_values_where_tritons_specialisation_is_not_what_they_rely_on(monkeypatch):
    libtriton = pytest.importorskip("triton._C.libtriton")
    if not hasattr(libtriton, "native_specialize_impl"):
        assert relaunch._scalar_specialiser() is None
        return

    def other_signature(backend, value, is_const, specialize):
        return ("i32", None)

    monkeypatch.setattr(libtriton, "native_specialize_impl", other_signature)
    assert relaunch._scalar_specialiser() is None
    monkeypatch.setattr(libtriton, "native_specialize_impl", lambda backend, value, *flags: ("i32", None))
    assert relaunch._scalar_specialiser() is None  # no divisibility: keying by it would lose what Triton reads


def test_a_change_of_tritons_debug_flag_sends_the_call_through_triton(fake_gpu, monkeypatch):
    fn = FakeJit()
    launch = Relauncher(fn)
    x = torch.zeros(64)
    launch((1,), (x, 64, 0.5), {"BLOCK": 2})
    monkeypatch.setattr(relaunch.triton.knobs.runtime, "debug", not relaunch.triton.knobs.runtime.debug)
    launch((1,), (x, 64, 0.5), {"BLOCK": 2})
    assert len(fn.compiled_runs) == 2 and fn.relaunches == []


def test_a_parameter_left_to_its_default_is_never_relaunched(fake_gpu):
    fn = FakeJit()
    launch = Relauncher(fn)
    x = torch.zeros(64)
    for _ in range(2):
        launch((1,), (x, 64, 0.5), {})
    assert len(fn.compiled_runs) == 2 and fn.relaunches == []


def test_with_launch_hooks_or_without_compiled_kernels_every_call_goes_through_triton(monkeypatch):
    fn = FakeJit()
    launch = Relauncher(fn)
    x = torch.zeros(64)
    monkeypatch.setattr(relaunch, "available", lambda: True)
    monkeypatch.setattr(relaunch, "_hooks_active", lambda: True)
    launch((1,), (x, 64, 0.5), {"BLOCK": 2})
    monkeypatch.setattr(relaunch, "_hooks_active", lambda: False)
    monkeypatch.setattr(relaunch, "available", lambda: False)
    launch((1,), (x, 64, 0.5), {"BLOCK": 2})
    assert len(fn.plain) == 2 and fn.compiled_runs == [] and len(launch) == 0


def test_hooks_count_as_installed_only_when_they_hold_a_call(monkeypatch):
    runtime = relaunch.triton.knobs.runtime
    empty = type("Chain", (), {"calls": []})()
    monkeypatch.setattr(runtime, "launch_enter_hook", empty, raising=False)
    monkeypatch.setattr(runtime, "launch_exit_hook", None, raising=False)
    assert not relaunch._hooks_active()
    monkeypatch.setattr(runtime, "launch_exit_hook", lambda metadata: None, raising=False)
    assert relaunch._hooks_active()


def test_a_bound_launch_swaps_only_the_varying_tensors_and_refuses_what_it_was_not_bound_for(fake_gpu, monkeypatch):
    fn = FakeJit()
    launch = Relauncher(fn)
    x, y = torch.zeros(64), torch.ones(64)
    assert launch.bind((2,), (x, 64, 0.5), {"BLOCK": 2}, None, (0,)) is None  # not launched yet
    launch((2,), (x, 64, 0.5), {"BLOCK": 2})
    bound = launch.bind((2,), (x, 64, 0.5), {"BLOCK": 2}, None, (0,))
    assert bound((y,))
    (launched,) = fn.relaunches
    assert launched[:4] == (2, 1, 1, 7) and launched[9] is y and launched[10:] == (64, 0.5, 2)
    storage = torch.zeros(65)
    assert not bound((y.double(),)) and not bound((storage[1:],))  # another dtype, another alignment
    monkeypatch.setattr(relaunch, "_current_device", lambda: 1)
    assert not bound((y,))
    monkeypatch.setattr(relaunch, "_current_device", lambda: 0)
    monkeypatch.setattr(relaunch, "_hooks_active", lambda: True)
    assert not bound((y,))
    monkeypatch.setattr(relaunch, "_hooks_active", lambda: False)
    monkeypatch.setattr(relaunch.triton.knobs.runtime, "debug", not relaunch.triton.knobs.runtime.debug)
    assert not bound((y,))
    assert len(fn.relaunches) == 1 and len(fn.compiled_runs) == 1


def test_a_bound_launch_keeps_no_tensor_of_the_call_it_was_bound_from_alive(fake_gpu):
    fn = FakeJit()
    launch = Relauncher(fn)
    x = torch.zeros(64)
    launch((2,), (x, 64, 0.5), {"BLOCK": 2})
    bound = launch.bind((2,), (x, 64, 0.5), {"BLOCK": 2}, None, (0,))
    fn.compiled_runs.clear()  # (the stand-in's record of the first launch holds x too)
    freed = weakref.ref(x)
    del x
    assert freed() is None
    y = torch.ones(64)
    assert bound((y,)) and fn.relaunches[-1][9] is y


def test_nothing_is_bound_where_calls_go_through_triton(monkeypatch):
    fn = FakeJit()
    launch = Relauncher(fn)
    monkeypatch.setattr(relaunch, "available", lambda: False)
    launch((1,), (torch.zeros(64), 64, 0.5), {"BLOCK": 2})
    assert launch.bind((1,), (torch.zeros(64), 64, 0.5), {"BLOCK": 2}, None, (0,)) is None


class DoublingKernel:
    """A compiled kernel that writes twice its first argument into its fourth (o = 2 q)."""

    function = "function"
    packed_metadata = "metadata"

    def __init__(self):
        self.runs = 0

    def run(self, *launch_args):
        self.runs += 1
        q, o = launch_args[9], launch_args[12]
        o.copy_(2 * q)


class DoublingTuned:
    """`flash._forward_call`'s tuned kernel, with the doubling kernel compiled behind it."""

    def __init__(self):
        self.compiled = DoublingKernel()
        self.launches = 0

    def launch(self, grid, args, meta, dtype):
        self.launches += 1
        args[3].copy_(2 * args[0])

    def bind(self, grid, args, meta, dtype, varying):
        if self.launches == 1:
            return None  # the first launch was tuned: nothing compiled to bind yet
        return relaunch.BoundLaunch(self.compiled, (), (1, 1, 1), 0, False, args, varying)


def test_the_first_forward_of_a_shape_binds_its_launch_and_later_ones_relaunch_it_on_their_own_tensors(
        fake_gpu, monkeypatch):
    from hf_efficient_attn.kernels import flash

    tuned = DoublingTuned()

    def forward_call(q, k, v, scale, mask, varlen, max_q, max_k):
        o, lse = torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)
        return o, lse, tuned, (1,), (q, k, v, o, lse, 7, 0.5), {}

    monkeypatch.setattr(flash, "_forward_call", forward_call)
    forward = flash.ForwardRelaunch(0.125, mask=None)
    k = v = torch.zeros(1, 2, 8, 4)
    first = torch.randn(1, 8, 2, 4).transpose(1, 2)
    assert forward.relaunch(first, k, v) is None  # nothing bound yet
    assert torch.equal(forward(first, k, v), 2 * first) and tuned.launches == 1
    assert forward.bound is None and forward.relaunch(first, k, v) is None
    assert torch.equal(forward(first, k, v), 2 * first) and tuned.launches == 2 and forward.bound is not None
    later = torch.randn(1, 8, 2, 4).transpose(1, 2)
    out = forward.relaunch(later, k, v)
    assert torch.equal(out, 2 * later) and out.stride() == later.stride() and tuned.compiled.runs == 1
    assert forward.relaunch(later.contiguous(), k, v) is None  # other strides: the usual path
    assert forward.relaunch(later.double(), k, v) is None  # another dtype: the usual path
    assert tuned.compiled.runs == 1 and tuned.launches == 2


def test_only_releases_checked_against_this_launch_path_relaunch():
    assert relaunch._release("3.6.0") == (3, 6) and relaunch._release("3.10.0rc1") == (3, 10)
    assert relaunch._release("3.5.1") < relaunch.CHECKED_SINCE <= relaunch._release("3.9.0")


@pytest.mark.skipif(DEVICE.type != "cuda", reason="relaunching needs compiled kernels (CUDA)")
def test_relaunched_kernels_match_the_reference_for_new_inputs_and_unaligned_views():
    torch.manual_seed(0)
    mask = {"causal": True, "window": (64, None)}
    k, v = (torch.randn(2, 2, 200, 64, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    storage = torch.randn(2 * 4 * 200 * 64 + 1, device=DEVICE, dtype=torch.bfloat16)
    inputs = [torch.randn(2, 4, 200, 64, device=DEVICE, dtype=torch.bfloat16) for _ in range(3)]
    inputs.append(storage[1:].view(2, 4, 200, 64))  # not 16-byte aligned: compiled for separately
    # the first call compiles and launches through Triton, the next two relaunch
    for q in inputs + inputs[-1:]:
        out = fused_attention(q, k, v, scale=0.125, **mask)
        decoded = decode_attention(q[:, :, -3:], k, v, scale=0.125)
        assert rel_err(out, reference(q, k, v, scale=0.125, **mask)) < tolerance(torch.bfloat16)
        expected = reference(q[:, :, -3:], k, v, scale=0.125, causal=True)
        assert rel_err(decoded, expected) < tolerance(torch.bfloat16)
    # decoding steps over a growing cache: new key counts and strides, relaunched where their class holds
    for length in (160, 161, 176, 177, 200):
        step = decode_attention(inputs[0][:, :, :1], k[:, :, :length].contiguous(), v[:, :, :length].contiguous(),
                                scale=0.125)
        expected = reference(inputs[0][:, :, :1], k[:, :, :length], v[:, :, :length], scale=0.125, causal=True)
        assert rel_err(step, expected) < tolerance(torch.bfloat16)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="relaunching needs compiled kernels (CUDA)")
@pytest.mark.parametrize("sparse", [False, True])
def test_the_layers_of_a_forward_relaunch_their_first_call_bound_and_match_the_reference(sparse):
    """`ops.DenseLaunch` binds its first launch (`flash.ForwardRelaunch`) and later calls with new tensors of
    the same shapes launch it; other strides and unaligned views take the usual path; all match float64."""
    from hf_efficient_attn.kernels import ops
    from hf_efficient_attn.variants import block_layout as layouts

    torch.manual_seed(0)
    blocks = 4
    pattern = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)[None]
    layout = layouts.register_layout("test:relaunch", lambda n, causal: pattern, fixed_blocks=blocks) if sparse else None
    run = ops.DenseLaunch(scale=0.125, causal=True, window=(None, None), sink_tokens=0, global_tokens=0,
                          layout=layout, layout_blocks=blocks if layout else 0, layout_block_size=64,
                          key_padding=None, documents=None)
    allowed = pattern if sparse else None
    storage = torch.randn(1 * 256 * 4 * 64 + 8, device=DEVICE, dtype=torch.bfloat16)
    calls = [torch.randn(1, 256, 4, 64, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2) for _ in range(3)]
    calls += [torch.randn(1, 4, 256, 64, device=DEVICE, dtype=torch.bfloat16),  # other strides
              storage[1:1 + 256 * 4 * 64].view(1, 256, 4, 64).transpose(1, 2)]  # not 16-byte aligned
    k, v = (torch.randn(1, 2, 256, 64, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    with torch.no_grad():
        for q in calls:
            out = run(q, k, v)
            assert out.stride() == torch.empty_like(q).stride()
            expected = reference(q, k, v, scale=0.125, causal=True, block_layout=allowed, layout_block_size=64)
            assert rel_err(out, expected) < tolerance(torch.bfloat16)
    forward = run._prepared[2]
    assert forward.bound is not None and forward.strides == tuple(x.stride() for x in (calls[0], k, v))
    assert forward.attempts <= 2  # the first call of a new key is tuned, the second can be bound
