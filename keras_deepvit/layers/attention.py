"""Multi-head self-attention with one override point between softmax and `attn @ v`."""

import keras
from keras import ops

from keras_deepvit.layers import attention_form, map_ops, wide_matmul
from keras_deepvit.layers.dense import Dense
from keras_deepvit.layers.initializers import dense_initializers, validate_initializer
from keras_deepvit.layers.sublayer_call import call_sublayer


#: Plain attention on JAX's CPU runs in query chunks whose float32 maps hold about this many bytes.
CHUNK_BYTES = 16 * 2**20
#: At most this many chunks per call, which bounds the compiled program's size.
MAX_QUERY_CHUNKS = 8


@keras.saving.register_keras_serializable(package="keras_deepvit")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head self-attention as in ViT: one fused `qkv` projection, then `proj`.

    `softmax(q k^T * head_dim**-0.5) v`, heads concatenated, then a linear
    projection. Subclasses change what happens to the attention maps between the
    softmax and the product with `v` by overriding `transform_attention` (and
    setting `transforms_attention`): that is where DeepViT's re-attention and
    Refiner-ViT's refinement plug in.

    When the maps are neither transformed nor requested, the layer calls
    `keras.ops.dot_product_attention`, which uses the backend's fused kernel
    (flash / cuDNN attention where available), wherever that kernel is faster
    than the explicit form (`attention_form.prefers_fused_attention`: never under
    XLA on a CPU; measured per shape on the PyTorch backend's CPU).

    Args:
        num_heads: int, number of heads; must divide the input width.
        qkv_bias: bool, whether the `qkv` projection has a bias.
        attention_dropout: float, dropout on the attention maps.
        proj_dropout: float, dropout after the output projection.
        initializer: "trunc_normal" (DeepViT, Refiner-ViT: weights
            `N(0, 0.02^2)`, zero biases) or "torch_default" (PiT: PyTorch's
            `nn.Linear` default, `U(+-1/sqrt(fan_in))`); see
            `keras_deepvit.layers.initializers`.

    Call arguments:
        inputs: `(batch, tokens, dim)` tensor.
        return_attention_scores: bool; if True also return the attention maps
            `(batch, heads, queries, tokens)` that multiplied `v` (after any
            transform), in PyTorch's layout.
        training: bool.
        query_tokens: None, or an int `r`: only the first `r` tokens are
            queries (keys and values are still every token), so the output has
            `r` tokens. Exact for those rows: every map row and every token's
            output depends on its own query only (`transform_needs_all_queries`
            says when a transform breaks that, and then the rows are taken
            after it). A model whose output reads only its class token(s) calls
            its last block this way.

    Returns:
        `(batch, queries, dim)`, or a tuple `(outputs, attention_maps)`;
        `queries` is `tokens`, or `query_tokens` when given.

    Example:
    >>> import numpy as np
    >>> layer = MultiHeadSelfAttention(num_heads=2)
    >>> out, maps = layer(np.zeros((1, 5, 8), "float32"), return_attention_scores=True)
    >>> out.shape, maps.shape
    ((1, 5, 8), (1, 2, 5, 5))
    """

    #: Subclasses that change the maps set this so the fused path is not taken.
    transforms_attention = False

    def __init__(
        self, num_heads, qkv_bias=True, attention_dropout=0.0, proj_dropout=0.0,
        initializer="trunc_normal", **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.attention_dropout = attention_dropout
        self.proj_dropout = proj_dropout
        self.initializer = validate_initializer(initializer, type(self).__name__)

    # ---- construction -------------------------------------------------
    def qkv_width(self, dim):
        """Output width of the `qkv` projection (q, k and v: `3 * dim`)."""
        return 3 * dim

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(
                f"Layer '{self.name}': width {dim} is not divisible by "
                f"num_heads={self.num_heads}."
            )
        self.dim = dim
        self.head_dim = dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = Dense(
            self.qkv_width(dim), use_bias=self.qkv_bias, dtype=self.dtype_policy, name="qkv",
            **dense_initializers(self.initializer, dim),
        )
        self.qkv.build(input_shape)
        self.proj = Dense(
            dim, dtype=self.dtype_policy, name="proj", **dense_initializers(self.initializer, dim)
        )
        self.proj.build(tuple(input_shape[:-1]) + (dim,))
        self.attn_drop = keras.layers.Dropout(self.attention_dropout, dtype=self.dtype_policy)
        self.proj_drop = keras.layers.Dropout(self.proj_dropout, dtype=self.dtype_policy)
        self.build_attention_transform()

    def build_attention_transform(self):
        """Creates the weights of `transform_attention`; nothing in plain attention."""

    # ---- computation --------------------------------------------------
    def transform_attention(self, attention, training=None):
        """Override point: maps `(batch, heads, q, k)` softmax output to the maps used.

        Must keep the shape: symbolic calls take their outputs from `compute_output_spec`.
        """
        return attention

    def transform_needs_all_queries(self, training=None):
        """Override point: whether `transform_attention` mixes map rows in this call
        (e.g. BatchNorm batch statistics over whole maps), so that `query_tokens`
        rows can only be taken after it."""
        return False

    def split_heads(self, x, parts):
        """`(batch, tokens, parts * dim)` -> `parts` tensors `(batch, heads, tokens, head_dim)`.

        Heads first is the layout of the two attention matmuls; XLA's
        `einsum("bhqk,bkhd->bqhd")` on tokens-first tensors took 3.5x longer
        than the transposed matmul (DeepViT-S block, CPU).
        """
        tokens = ops.shape(x)[1]
        x = ops.reshape(x, (-1, tokens, parts, self.num_heads, self.head_dim))
        # `unstack`, not indexing: the `qkv` gradient is then one stack (see there).
        return map_ops.unstack(ops.transpose(x, (2, 0, 3, 1, 4)))

    def attention_maps(self, q, k, query_scale=None):
        """Softmax attention `(batch, heads, q, k)` from `(batch, heads, tokens, head_dim)`.

        The logits are `(q * self.scale) k^T` (the official `q k^T * scale` up to
        float32 rounding); with `query_scale`, `q` and `k` are each multiplied by
        it instead (Refiner-ViT's official order).
        """
        if query_scale is None:
            # Scaling `q` rather than the logits saves a pass over the `N x N` maps
            # (under XLA:CPU's YNNPACK fusions also a broadcast of the scale to that size).
            logits = wide_matmul.matmul(q * ops.cast(self.scale, q.dtype), ops.swapaxes(k, -1, -2))
        else:
            root = ops.cast(query_scale, q.dtype)
            logits = wide_matmul.matmul(q * root, ops.swapaxes(k * root, -1, -2))
        return map_ops.attention_softmax(logits)

    def query_chunks(self, q, k):
        """In how many query chunks plain attention runs: 1 unless JAX compiles it for a CPU.

        Each map row depends on its own query only, so chunks of queries give the
        same numbers. XLA:CPU under JAX (jaxlib 0.10) ran PiT's first-stage
        attention (730 tokens) faster in chunks of maps of about `CHUNK_BYTES`
        than as one `B x H x N x N` tensor; TensorFlow's XLA did not, so it keeps
        one (measurements: docs/performance.md).

        Example:
        >>> layer = MultiHeadSelfAttention(num_heads=2)
        >>> layer.query_chunks(keras.ops.zeros((1, 2, 5, 4)), keras.ops.zeros((1, 2, 5, 4)))
        1
        """
        if keras.backend.backend() != "jax" or not map_ops.xla_on_cpu():
            return 1
        batch, heads, queries, _ = q.shape
        tokens = k.shape[2]
        if None in (batch, queries, tokens):
            return 1
        map_bytes = batch * heads * queries * tokens * 4
        return int(min(MAX_QUERY_CHUNKS, -(-map_bytes // CHUNK_BYTES), queries))

    def attend(self, attention, v):
        """`attention @ v` with heads merged back: `(batch, tokens, dim)`."""
        return self.merge_heads(wide_matmul.matmul(attention, v))

    def merge_heads(self, x):
        """`(batch, heads, tokens, head_dim)` -> `(batch, tokens, dim)`."""
        out = ops.transpose(x, (0, 2, 1, 3))
        return ops.reshape(out, (-1, ops.shape(out)[1], self.dim))

    def output_projection(self, x, training=None):
        return call_sublayer(self.proj_drop, call_sublayer(self.proj, x), training=training)

    def call(self, inputs, return_attention_scores=False, training=None, query_tokens=None):
        q, k, v = self.split_heads(call_sublayer(self.qkv, inputs), 3)
        rows_late = query_tokens is not None and self.transform_needs_all_queries(training)
        if query_tokens is not None and not rows_late:
            q = q[:, :, :query_tokens]
        use_fused = not (
            return_attention_scores
            or self.transforms_attention
            or (training and self.attention_dropout > 0)
        )
        if use_fused and attention_form.prefers_fused_attention(q, k):
            out = self.merge_heads(map_ops.fused_attention(q, k, v, self.scale))
            return self.output_projection(out, training=training)
        chunks = self.query_chunks(q, k) if use_fused else 1
        if chunks > 1:
            queries = ops.shape(q)[2]
            rows = -(-queries // chunks)
            parts = [
                self.attend(self.attention_maps(q[:, :, start : start + rows], k), v)
                for start in range(0, queries, rows)
            ]
            return self.output_projection(ops.concatenate(parts, axis=1), training=training)
        attention = self.attention_maps(q, k)
        attention = call_sublayer(self.attn_drop, attention, training=training)
        attention = self.transform_attention(attention, training=training)
        if rows_late:
            attention = attention[:, :, :query_tokens]
        out = self.output_projection(self.attend(attention, v), training=training)
        if return_attention_scores:
            return out, attention
        return out

    def compute_output_spec(
        self, inputs, return_attention_scores=False, training=None, query_tokens=None
    ):
        """Shapes by arithmetic, not by tracing `call`: building a 32-block model
        on TensorFlow or JAX traced every block's whole computation."""
        batch, tokens, dim = inputs.shape
        queries = tokens if query_tokens is None else query_tokens
        out = keras.KerasTensor((batch, queries, dim), dtype=self.compute_dtype)
        if not return_attention_scores:
            return out
        maps = keras.KerasTensor((batch, self.num_heads, queries, tokens), dtype=self.compute_dtype)
        return out, maps

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "qkv_bias": self.qkv_bias,
                "attention_dropout": self.attention_dropout,
                "proj_dropout": self.proj_dropout,
                "initializer": self.initializer,
            }
        )
        return config
