"""Building blocks of wmil.nets: shapes, pixel scaling, and the GRU cell's equations."""

from unittest import mock

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


# ------------------------------------------------------------------ action heads and helpers

import math  # noqa: E402

from wmil.config import ActorConfig  # noqa: E402
from wmil.nets import ActionBounds, ActionHead, Standardizer, apply_gradients, categorical, update_target  # noqa: E402
from wmil.nets.heads import inverse_cdf  # noqa: E402
from wmil.types import DataSpec  # noqa: E402


def _continuous_head(low=-2.0, high=2.0):
    spec = DataSpec((3,), "float32", 1, False, (low,), (high,))
    return ActionHead(3, spec, ActorConfig(layers=1, units=8))


def test_squashed_gaussian_log_prob_by_hand():
    head = _continuous_head()
    last = head.net.net[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        # mean 0, std = softplus(raw) + 0.1 = 1
        last.bias.copy_(torch.tensor([0.0, math.log(math.expm1(0.9))]))
    features = torch.randn(2, 3)
    # a = 0 → u = 0: log N(0; 0, 1) − log(half_range · (1 − tanh² 0)) = −½ log 2π − log 2.
    log_prob = head.log_prob(features, torch.zeros(2, 1))
    torch.testing.assert_close(log_prob, torch.full((2,), -0.5 * math.log(2 * math.pi) - math.log(2)))
    # a = 2·tanh(0.5) → u = 0.5: extra −½·0.25 − log(1 − tanh² 0.5).
    a = torch.full((2, 1), 2 * math.tanh(0.5))
    expected = -0.5 * math.log(2 * math.pi) - 0.125 - math.log(2) - math.log(1 - math.tanh(0.5) ** 2)
    torch.testing.assert_close(head.log_prob(features, a), torch.full((2,), expected))
    # Actions on (or beyond) the bound are clamped inside it: finite.
    assert torch.isfinite(head.log_prob(features, torch.tensor([[2.0], [-2.5]]))).all()


@pytest.mark.parametrize("discrete", [True, False])
def test_action_head_log_prob_matches_its_samples(discrete):
    torch.manual_seed(0)
    if discrete:
        spec = DataSpec((3,), "float32", 4, True)
    else:
        spec = DataSpec((3,), "float32", 2, False, (-1.0, 0.0), (1.0, 3.0))
    head = ActionHead(3, spec, ActorConfig(layers=1, units=16))
    features = torch.randn(64, 3)
    action, log_prob, entropy = head(features)
    torch.testing.assert_close(head.log_prob(features, action, eps=1e-7), log_prob, rtol=1e-3, atol=1e-3)
    if discrete:
        assert set(action.sum(-1).tolist()) == {1.0}
        torch.testing.assert_close(entropy, -(torch.softmax(head.net(features), -1)
                                              * torch.log_softmax(head.net(features), -1)).sum(-1))
    else:
        low, high = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 3.0])
        assert ((action >= low) & (action <= high)).all()
        torch.testing.assert_close(entropy, -log_prob)


def test_action_head_on_an_unbounded_space_is_a_plain_gaussian():
    spec = DataSpec((3,), "float32", 1, False, (-math.inf,), (math.inf,))
    head = ActionHead(3, spec, ActorConfig(layers=0))
    with torch.no_grad():
        head.net.net[-1].weight.zero_()
        head.net.net[-1].bias.copy_(torch.tensor([5.0, math.log(math.expm1(0.9))]))  # mean 5, std 1
    action, _, _ = head(torch.zeros(1, 3), deterministic=True)
    assert float(action.detach()) == 5.0  # no squashing
    torch.testing.assert_close(head.log_prob(torch.zeros(1, 3), torch.tensor([[6.0]])),
                               torch.tensor([-0.5 - 0.5 * math.log(2 * math.pi)]))


def test_categorical_samples_and_straight_through_gradients():
    logits = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    action, log_prob, entropy = categorical(logits, deterministic=True)
    assert action.tolist() == [[0.0, 1.0]] and not action.requires_grad
    torch.testing.assert_close(log_prob, torch.tensor([math.log(0.75)]))
    torch.testing.assert_close(entropy, torch.tensor([-(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]))
    through, _, _ = categorical(logits, deterministic=True, straight_through=True)
    torch.testing.assert_close(through.detach(), torch.tensor([[0.0, 1.0]]))  # one-hot in value
    through[0, 1].backward()                 # ∂p₁/∂l = p₁(δ − p)
    torch.testing.assert_close(logits.grad, torch.tensor([[-0.1875, 0.1875]]))
    torch.manual_seed(0)
    draws = torch.stack([categorical(torch.log(torch.tensor([0.2, 0.8])))[0] for _ in range(2000)])
    assert abs(float(draws[:, 1].mean()) - 0.8) < 0.03


def test_inverse_cdf_draws_each_class_with_its_probability_and_never_an_impossible_one():
    torch.manual_seed(0)
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3], [0.0, 0.0, 0.0, 0.0, 1.0]]).repeat(20000, 1)
    index = inverse_cdf(probs).squeeze(-1)
    first, second = index[0::2], index[1::2]
    frequencies = torch.bincount(first, minlength=5).float() / len(first)
    torch.testing.assert_close(frequencies, probs[0], atol=0.01, rtol=0)
    assert not bool(((first == 0) | (first == 2)).any()), "classes of probability 0 are never drawn"
    assert bool((second == 4).all())
    # u = 0 (torch.rand's smallest value) still skips a leading class of probability 0
    with mock.patch("torch.rand", lambda *a, **k: torch.zeros(1, 1)):
        assert int(inverse_cdf(torch.tensor([[0.0, 1.0]]))) == 1


def test_action_bounds_and_standardizer():
    bounds = ActionBounds(DataSpec((1,), "float32", 2, False, (-1.0, 0.0), (3.0, 1.0)))
    assert bounds.bounded
    torch.testing.assert_close(bounds.center, torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(bounds.to_unit(torch.tensor([3.0, 0.0])), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(bounds.from_unit(torch.tensor([0.0, 1.0])), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(bounds.clip(torch.tensor([5.0, -2.0])), torch.tensor([3.0, 0.0]))
    identity = ActionBounds(DataSpec((1,), "float32", 3, True))
    assert not identity.bounded and torch.equal(identity.to_unit(torch.eye(3)), torch.eye(3))
    standardize = Standardizer(2)
    data = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    standardize.fit(data, floor=0.1)
    torch.testing.assert_close(standardize.std, torch.tensor([1.0, 0.1]))   # constant coordinate: the floor
    torch.testing.assert_close(standardize(data), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(standardize.inverse(standardize(data)), data)


def test_apply_gradients_and_target_updates():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    norm = apply_gradients(opt, (net(torch.tensor([[3.0]])) ** 2).sum() * 10, clip=1.0)
    assert norm == pytest.approx(180.0)                      # d/dw 10 (3w)² = 180 w, at w = 1
    assert float(net.weight.detach()) == pytest.approx(1.0 - 0.1)     # clipped to norm 1
    target = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        target.weight.fill_(0.0)
    update_target(target, net, step=1, every=0, tau=0.5)     # Polyak: halfway
    assert float(target.weight.detach()) == pytest.approx(0.45)
    update_target(target, net, step=3, every=2, tau=0.5)     # hard copy only every 2nd update
    assert float(target.weight.detach()) == pytest.approx(0.45)
    update_target(target, net, step=4, every=2, tau=0.5)
    assert float(target.weight.detach()) == pytest.approx(0.9)


def test_adam_is_fused_and_takes_the_default_kernels_step():
    """wmil.nets.adam picks torch's fused kernel and moves the parameters as the default Adam does
    (over several steps, with weight decay), and keeps the default kernel where it cannot fuse."""
    from wmil.nets import adam

    torch.manual_seed(0)
    start = [torch.randn(37, 11), torch.randn(11)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]
    moved = []
    for fused in (True, False):
        params = [p.clone().requires_grad_() for p in start]
        opt = adam(params, lr=1e-2, eps=1e-5, weight_decay=0.1) if fused else \
            torch.optim.Adam(params, lr=1e-2, eps=1e-5, weight_decay=0.1)
        assert bool(opt.defaults["fused"]) is fused
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        moved.append([p.detach() for p in params])
    for a, b, s in zip(*moved, start):
        assert (a - s).abs().max() > 0.04                        # five steps of lr 1e-2 moved them
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not adam([torch.zeros(3, dtype=torch.int64)], lr=1e-3).defaults["fused"]


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
