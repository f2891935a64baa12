"""Which form of plain attention runs faster here: the fused kernel or explicit matmuls.

`MultiHeadSelfAttention` computes `softmax(q k^T * scale) v` either with the
backend's fused kernel (`map_ops.fused_attention`) or with two explicit
matmuls around a softmax accumulated in float32 (`map_ops.attention_softmax`).
Under XLA on a CPU the explicit form is always faster
(`map_ops.has_fused_attention`). On the PyTorch backend's CPU the answer depends
on the shape, the dtype and whether a backward pass follows: in float32
PyTorch's flash kernel, which never writes the `N x N` maps, wins on long
sequences and loses on short ones, and its bfloat16 path lost to the explicit
bfloat16 form at every length measured on one CPU (docs/performance.md). So that
choice is measured: the first call with a new shape times both forms at that
shape, forward only or forward and backward, and keeps the answer as a fact of
the machine (`machine_facts`).
"""

import functools

import keras

from keras_deepvit.layers import machine_facts, map_ops

#: Probes run at most this batch, so that a probe stays near a second even for 730
#: tokens. Both forms are batched over `batch x heads` independently, so the answer
#: at batch 8 is taken for larger batches too (not measured beyond 8).
PROBE_BATCH = 8


def prefers_fused_attention(q, k):
    """Whether `map_ops.fused_attention(q, k, v, scale)` is the faster form for these tensors.

    Args:
        q: `(batch, heads, queries, head_dim)` queries.
        k: `(batch, heads, tokens, head_dim)` keys.

    Returns:
        False under XLA on a CPU; on the PyTorch backend's CPU, the measured
        answer for this shape, dtype and mode (a backward pass follows when grad
        mode is on and `q` requires grad); True otherwise (GPUs, where the fused
        kernel is flash or cuDNN attention).

    Example:
    >>> q = keras.ops.zeros((1, 2, 5, 4))
    >>> prefers_fused_attention(q, q) in (True, False)
    True
    """
    if not map_ops.has_fused_attention():
        return False
    if keras.backend.backend() != "torch":
        return True
    import torch

    q = keras.ops.convert_to_tensor(q)
    if q.device.type != "cpu" or torch.compiler.is_compiling():
        # Inside `torch.compile` the probe cannot run; Inductor gets the fused op,
        # as before this choice existed.
        return True
    batch, heads, queries, head_dim = q.shape
    tokens = k.shape[2]
    training = torch.is_grad_enabled() and q.requires_grad
    return _torch_fused_is_faster(
        str(q.dtype).removeprefix("torch."), training,
        min(batch, PROBE_BATCH), heads, queries, tokens, head_dim,
    )


@functools.lru_cache(maxsize=None)
def _torch_fused_is_faster(dtype, training, batch, heads, queries, tokens, head_dim):
    def measure():
        explicit, fused = _time_torch_forms(dtype, training, (batch, heads, queries, tokens, head_dim))
        return {"explicit_s": explicit, "fused_s": fused, "fused": fused < explicit}

    mode = "forward and backward" if training else "forward"
    key = (
        f"{machine_facts.framework_key('torch')} | attention {dtype} {mode}, "
        f"batch {batch}, heads {heads}, queries {queries}, tokens {tokens}, head_dim {head_dim}"
    )
    return bool(machine_facts.measured_fact(key, measure)["fused"])


def _explicit_torch_attention(q, k, v, scale):
    """The explicit form as `MultiHeadSelfAttention` runs it on PyTorch (`attention_softmax`)."""
    import torch

    return torch.matmul(torch.softmax(torch.matmul(q * scale, k.transpose(-1, -2)), dim=-1), v)


def _time_torch_forms(dtype, training, shape):
    """Seconds of the explicit and of the fused form on random tensors of `shape`.

    Measured on the caller's thread, whose allocator arena the model's own
    tensors come from: on a thread of its own the probe's `N x N` maps came from
    a fresh glibc arena, whose heaps are unmapped when they empty, so the
    explicit form paid page faults the model never pays and lost where it wins
    (docs/performance.md). The caller may be inside a checkpointed forward pass
    (`rematerialize_blocks=True`), whose saved-tensor hooks would pack the
    probe's own saved tensors and recompute the block to unpack them (asking
    this probe again); the innermost hooks win, so the probe saves its tensors
    through identity hooks.
    """
    import torch

    with torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
        return _time_torch_forms_here(dtype, training, shape)


def _keep(tensor):
    return tensor


def _time_torch_forms_here(dtype, training, shape):
    import torch

    batch, heads, queries, tokens, head_dim = shape
    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, dtype)

    def tensor(rows):
        return torch.randn((batch, heads, rows, head_dim), generator=generator).to(dtype)

    q, k, v = tensor(queries), tensor(tokens), tensor(tokens)
    upstream = tensor(queries)
    scale = head_dim**-0.5

    def timed(form):
        if not training:
            with torch.no_grad():
                return machine_facts.best_time(lambda: form(q, k, v, scale))
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        with torch.enable_grad():
            return machine_facts.best_time(lambda: form(*inputs, scale).backward(upstream))

    def fused(q, k, v, scale):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)

    return timed(_explicit_torch_attention), timed(fused)
