"""Network building blocks (no losses): MLPs, the LayerNorm GRU cell, conv encoder/decoder."""

from wmil.nets.conv import ConvDecoder, ConvEncoder, postprocess_pixels, preprocess_pixels
from wmil.nets.mlp import ACTIVATIONS, MLP, LayerNormGRUCell, activation

__all__ = [
    "ACTIVATIONS", "MLP", "LayerNormGRUCell", "activation",
    "ConvEncoder", "ConvDecoder", "preprocess_pixels", "postprocess_pixels",
]
