"""Building blocks of wmil.nets: shapes, pixel scaling, and the GRU cell's equations."""

import pytest
import torch

from wmil.nets import (MLP, ConvDecoder, ConvEncoder, LayerNormGRUCell, activation,
                       postprocess_pixels, preprocess_pixels)


def test_mlp_shapes_any_leading_dims():
    net = MLP(5, 3, layers=2, units=16, act="elu", norm=True)
    assert net(torch.randn(4, 7, 5)).shape == (4, 7, 3)
    trunk = MLP(5, None, layers=2, units=16)
    assert trunk.out_dim == 16 and trunk(torch.randn(2, 5)).shape == (2, 16)


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match="elu"):
        activation("gelu-ish")


@pytest.mark.parametrize("channels", [1, 3])
def test_conv_encoder_decoder_shapes(channels):
    encoder = ConvEncoder(channels, depth=4)
    decoder = ConvDecoder(10, channels, depth=4)
    images = torch.randn(2, 3, channels, 64, 64)
    assert encoder(images).shape == (2, 3, encoder.out_dim) == (2, 3, 32 * 4)
    assert decoder(torch.randn(2, 3, 10)).shape == (2, 3, channels, 64, 64)


def test_conv_encoder_rejects_wrong_image_size():
    with pytest.raises(AssertionError, match="64, 64"):
        ConvEncoder(1, depth=4)(torch.randn(2, 1, 32, 32))


def test_pixel_scaling_round_trip():
    pixels = torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8)
    scaled = preprocess_pixels(pixels)
    assert scaled.dtype == torch.float32
    assert torch.allclose(scaled[[0, -1]], torch.tensor([-0.5, 0.5]))
    assert torch.equal(postprocess_pixels(scaled), pixels)
    assert torch.equal(postprocess_pixels(torch.tensor([-3.0, 3.0])),
                       torch.tensor([0, 255], dtype=torch.uint8))


def test_layer_norm_gru_cell_matches_dreamerv2_equations():
    torch.manual_seed(0)
    cell = LayerNormGRUCell(3, 4)
    with torch.no_grad():
        cell.norm.weight.uniform_(0.5, 1.5)
        cell.norm.bias.uniform_(-0.5, 0.5)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    parts = torch.nn.functional.layer_norm(torch.cat([x, h], -1) @ cell.linear.weight.t(), (12,),
                                           cell.norm.weight, cell.norm.bias)
    reset, cand, update = torch.sigmoid(parts[:, :4]), parts[:, 8:], torch.sigmoid(parts[:, 4:8] - 1)
    cand = torch.tanh(reset * cand)
    expected = update * cand + (1 - update) * h
    assert torch.allclose(cell(x, h), expected, atol=1e-6)
