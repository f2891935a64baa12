"""Public building blocks of DeepViT, Refiner-ViT and PiT (all serializable Keras layers)."""

from keras_deepvit.layers.attention import MultiHeadSelfAttention
from keras_deepvit.layers.blocks import Mlp, ReAttentionBlock, RefinerBlock, TransformerBlock
from keras_deepvit.layers.drop_path import DropPath
from keras_deepvit.layers.embeddings import (
    ClassTokens,
    ConvPatchEmbedding,
    ConvStemPatchEmbedding,
    PositionEmbedding,
)
from keras_deepvit.layers.pooling import ConvHeadPooling
from keras_deepvit.layers.preprocessing import ImageNormalization
from keras_deepvit.layers.re_attention import ReAttention
from keras_deepvit.layers.refiner_attention import DistributedLocalAttention, RefinerAttention

__all__ = [
    "ClassTokens",
    "ConvHeadPooling",
    "ConvPatchEmbedding",
    "ConvStemPatchEmbedding",
    "DistributedLocalAttention",
    "DropPath",
    "ImageNormalization",
    "Mlp",
    "MultiHeadSelfAttention",
    "PositionEmbedding",
    "ReAttention",
    "ReAttentionBlock",
    "RefinerAttention",
    "RefinerBlock",
    "TransformerBlock",
]
