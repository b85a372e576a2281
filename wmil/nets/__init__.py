"""Network building blocks (no losses): MLPs, the LayerNorm GRU cell, conv encoder/decoder,
action heads, action bounds, input standardisation, optimiser steps and target updates."""

from wmil.nets.conv import ConvDecoder, ConvEncoder, postprocess_pixels, preprocess_pixels
from wmil.nets.heads import ActionBounds, ActionHead, Standardizer, categorical
from wmil.nets.mlp import ACTIVATIONS, MLP, LayerNormGRUCell, activation
from wmil.nets.optim import adam, apply_gradients, reducing_gradients, update_target

__all__ = [
    "ACTIVATIONS", "MLP", "LayerNormGRUCell", "activation",
    "ConvEncoder", "ConvDecoder", "preprocess_pixels", "postprocess_pixels",
    "ActionBounds", "ActionHead", "Standardizer", "categorical", "adam", "apply_gradients", "reducing_gradients", "update_target",
]
