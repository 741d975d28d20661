"""Optional attention backends built on libraries below Triton, one module each.

Every backend module has the same three entry points, so that the dispatch rule can treat backends as data:

* ``available() -> bool``: whether the library is installed and usable on this machine (never raises);
* ``supports(query, key, value, *, causal, window_left, window_right, key_lengths, needs_grad) -> str | None``:
  None when the backend computes this call exactly, else the reason it does not;
* ``attention(query, key, value, *, scale, causal, window_left, window_right, key_lengths=None) -> Tensor``:
  the output ``[batch, q_heads, q_len, head_dim]``, differentiable, and a single custom op to ``torch.compile``.

Windows are stated in the kernels' terms (`fused_path.KernelMask`): query ``i`` sits at position
``p = i + (k_len - q_len)`` in causal calls (queries aligned to the last keys, as in a cache) and ``p = i``
otherwise, and sees key ``j`` when ``p - j < window_left`` and ``j - p < window_right`` (None: that side is
unbounded).

Modules: `cudnn_sdpa` (cuDNN's fused attention through ``nvidia-cudnn-frontend``, the ``cudnn`` extra).
Importing this package imports none of the libraries.
"""
