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


def _toy_loop(weights, biases, inputs, tape=None):
    """h_{t+1} = tanh(h_t W1 + (x_t W0 + b0)); returns the stacked states (T, B, D)."""
    from wmil.nets.step_linear import StepTape

    h = torch.zeros(inputs.shape[1], weights[1].shape[0])
    if tape:
        tape = StepTape(weights, biases)
        (h,) = tape.start(h)
        linear = tape.linear
    else:
        def linear(i, x, add=None):
            base = add if add is not None else biases[i]
            return x @ weights[i] if base is None else torch.addmm(base, x, weights[i])
    states = []
    for x in inputs:
        h = torch.tanh(linear(1, h, linear(0, x)))
        states.append(h)
    return torch.stack(states)


def test_step_tape_gives_the_gradients_of_plain_autograd():
    """The tape sums the weight gradients of all steps in one product after the loop: the
    forward values are the same and the gradients agree up to float32 rounding, also when a
    step's output never reaches the loss and when the graph is differentiated twice."""
    torch.manual_seed(0)
    w0, w1 = torch.randn(3, 5, requires_grad=True), torch.randn(5, 5, requires_grad=True)
    b1 = torch.randn(5, requires_grad=True)
    inputs = torch.randn(6, 4, 3, requires_grad=True)
    results = []
    for tape in (False, True):
        states = _toy_loop([w0, w1 * 0.5], [b1, None], inputs, tape)
        loss = states[:4].pow(2).sum()  # steps 4 and 5 do not reach the loss
        first = torch.autograd.grad(loss, [w0, w1, b1, inputs], retain_graph=True)
        second = torch.autograd.grad(loss, [w0, w1, b1, inputs])
        results.append((states.detach(), first, second))
    (plain, plain_grads, _), (taped, taped_grads, taped_again) = results
    assert torch.equal(plain, taped)
    for expected, got, again in zip(plain_grads, taped_grads, taped_again):
        assert expected.abs().sum() > 0
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(got, again)


@pytest.mark.parametrize("kernel,size,cin,cout", [(5, 5, 8, 4), (6, 13, 4, 3), (6, 30, 4, 1), (4, 7, 2, 2)])
def test_conv_transpose2x_is_the_transposed_convolution(kernel, size, cin, cout):
    """The sub-pixel forward and the transposed convolution's backward give the layer's values
    and gradients (float64: exact up to summation order)."""
    from wmil.nets.conv import conv_transpose2x

    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(cin, cout, kernel, stride=2).double()
    x = torch.randn(3, cin, size, size, dtype=torch.float64, requires_grad=True)
    expected = layer(x)
    got = conv_transpose2x(x, layer)
    assert got.shape == expected.shape == (3, cout, 2 * size - 2 + kernel, 2 * size - 2 + kernel)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(expected)
    wanted = torch.autograd.grad(expected, [x, layer.weight, layer.bias], grad)
    for a, b in zip(torch.autograd.grad(got, [x, layer.weight, layer.bias], grad), wanted):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_conv_transpose2x_under_bf16_autocast():
    from wmil.nets.conv import conv_transpose2x

    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(8, 1, 6, stride=2)
    x = torch.randn(2, 8, 30, 30, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = layer(x), conv_transpose2x(x, layer)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.02)
    got.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
