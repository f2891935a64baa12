"""`attention_form`: plain attention takes the fused kernel or explicit matmuls as this
machine measures faster (PyTorch's CPU), per shape, dtype and mode, measured once and
cached; never the fused op under XLA on a CPU."""

import doctest
import json

import keras
import numpy as np
import pytest

from keras_deepvit.layers import MultiHeadSelfAttention, attention_form, machine_facts, map_ops

BACKEND = keras.backend.backend()
torch_only = pytest.mark.skipif(BACKEND != "torch", reason="the measured choice is the PyTorch backend's")


@pytest.fixture
def private_facts(monkeypatch, tmp_path):
    """An empty facts file and an empty in-process cache, for this test only."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    attention_form._torch_fused_is_faster.cache_clear()
    yield tmp_path / "keras_deepvit" / "machine_facts.json"
    attention_form._torch_fused_is_faster.cache_clear()


def test_docstring_examples(private_facts):
    results = doctest.testmod(attention_form, extraglobs={"keras": keras})
    assert results.attempted > 0 and results.failed == 0


def test_xla_on_a_cpu_never_takes_the_fused_op():
    q = keras.ops.zeros((1, 2, 5, 4))
    if BACKEND == "torch":
        pytest.skip("measured on PyTorch (tests below)")
    assert attention_form.prefers_fused_attention(q, q) is map_ops.has_fused_attention()
    if map_ops.xla_on_cpu():
        assert attention_form.prefers_fused_attention(q, q) is False


@torch_only
def test_the_choice_is_measured_once_per_shape_dtype_and_mode(monkeypatch, private_facts):
    import torch

    calls = []

    def timings(dtype, training, shape):
        calls.append((dtype, training, shape))
        return (1.0, 2.0) if training else (2.0, 1.0)  # (explicit, fused) seconds

    monkeypatch.setattr(attention_form, "_time_torch_forms", timings)
    q = torch.zeros((16, 2, 7, 4), dtype=torch.bfloat16, requires_grad=True)
    k = torch.zeros((16, 2, 9, 4), dtype=torch.bfloat16)
    assert attention_form.prefers_fused_attention(q, k) is False  # training: explicit measured faster
    with torch.no_grad():
        assert attention_form.prefers_fused_attention(q, k) is True
    assert attention_form.prefers_fused_attention(q.detach(), k) is True  # nothing to differentiate
    # The probe's batch is capped; queries and tokens are the call's.
    assert calls == [("bfloat16", True, (8, 2, 7, 9, 4)), ("bfloat16", False, (8, 2, 7, 9, 4))]
    facts = json.loads(private_facts.read_text())
    assert len(facts) == 2
    key = next(k for k in facts if "forward and backward" in k)
    assert key.startswith(f"{machine_facts.framework_key('torch')} | attention bfloat16")
    assert "batch 8, heads 2, queries 7, tokens 9, head_dim 4" in key
    assert facts[key] == {"explicit_s": 1.0, "fused_s": 2.0, "fused": False}
    attention_form._torch_fused_is_faster.cache_clear()  # a new process reads the file
    assert attention_form.prefers_fused_attention(q, k) is False and len(calls) == 2
    attention_form.prefers_fused_attention(q.float(), k.float())  # another dtype: measured
    assert len(calls) == 3


@torch_only
def test_inside_torch_compile_the_fused_op_is_kept_without_a_probe(monkeypatch, private_facts):
    import torch

    monkeypatch.setattr(attention_form, "_time_torch_forms", lambda *args: pytest.fail("probed"))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    q = torch.zeros((1, 2, 5, 4), requires_grad=True)
    assert attention_form.prefers_fused_attention(q, q) is True


@torch_only
@pytest.mark.parametrize("training", [False, True])
def test_the_real_probe_times_both_forms(training):
    explicit, fused = attention_form._time_torch_forms("float32", training, (2, 2, 9, 9, 8))
    assert 0 < explicit < 1 and 0 < fused < 1


@pytest.mark.parametrize("fused", [False, True])
def test_the_layer_follows_the_choice_with_the_same_values(monkeypatch, fused):
    """Both forms give the same output (gradients: test_map_ops); the kernel runs iff chosen."""
    monkeypatch.setattr(attention_form, "prefers_fused_attention", lambda q, k: fused)
    kernel_calls = []
    real_kernel = map_ops.fused_attention
    monkeypatch.setattr(
        map_ops, "fused_attention", lambda *args: kernel_calls.append(1) or real_kernel(*args)
    )
    tokens = np.random.default_rng(0).standard_normal((2, 6, 8)).astype("float32")
    layer = MultiHeadSelfAttention(num_heads=2)
    layer.build(tokens.shape)
    out = keras.ops.convert_to_numpy(layer(tokens))
    explicit, _ = layer(tokens, return_attention_scores=True)  # never fused
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(explicit), atol=1e-5)
    assert bool(kernel_calls) is fused


@torch_only
def test_the_probe_runs_on_the_callers_thread(monkeypatch):
    """Where the model's tensors are allocated: a thread of its own got a fresh glibc
    arena whose emptied heaps are unmapped, so the probe timed page faults."""
    import threading

    threads = []
    monkeypatch.setattr(
        attention_form, "_time_torch_forms_here",
        lambda *args: threads.append(threading.get_ident()) or (1.0, 2.0),
    )
    assert attention_form._time_torch_forms("float32", True, (1, 1, 2, 2, 2)) == (1.0, 2.0)
    assert threads == [threading.get_ident()]


@torch_only
def test_the_probe_runs_inside_a_rematerialized_block_and_its_recomputation(private_facts):
    """The probe's own backward pass must not go through the checkpoint's saved-tensor
    hooks (it recomputed the block, which asked the probe again: a deadlock)."""
    import threading

    from keras_deepvit.layers import TransformerBlock

    block = TransformerBlock(num_heads=2, rematerialize=True)
    tokens = keras.Variable(np.random.default_rng(1).standard_normal((2, 5, 8)).astype("float32"))
    block.build(tokens.shape)
    done = []

    def step():
        out = block(tokens.value, training=True)
        out.sum().backward()
        done.append(tokens.value.grad is not None)

    worker = threading.Thread(target=step, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert done == [True], "the training step with an unmeasured attention shape did not finish"
    assert any("forward and backward" in key for key in json.loads(private_facts.read_text()))
