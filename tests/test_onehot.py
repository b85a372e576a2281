"""Linear maps that read one-hot samples as sums of weight columns (wmil.nets.onehot): the same
function and gradients as the dense product, taken only where that holds, and the same
imagined rollouts and actor-critic update as without it."""

import copy

import pytest
import torch
from torch import nn

from wmil.imagination.actor_critic import ActorCritic, ActorCriticConfig, imagine
from wmil.nets import onehot
from wmil.nets.onehot import OneHot, columns, flat_index
from wmil.types import DataSpec, State
from wmil.world_models import config_for, make_world_model
from wmil.world_models.latent import straight_through_sample

G, C = 4, 5


def _input(lead, dense, seed=0):
    gen = torch.Generator().manual_seed(seed)
    index = flat_index(torch.randint(0, C, (*lead, G), generator=gen), C)
    block = torch.zeros(*lead, G * C).scatter_(-1, index, 1.0)
    return torch.cat([torch.randn(*lead, dense, generator=gen), block], -1), OneHot(index, G * C)


def _sparse(out) -> bool:
    """Whether ``out`` came out of the sparse path (its node, under the reshape back)."""
    nodes = [out.grad_fn] + [n for n, _ in out.grad_fn.next_functions if n is not None]
    return any("OneHotLinear" in type(n).__name__ for n in nodes)


@pytest.mark.parametrize("dense, bias", [(3, True), (0, False), (3, False)])
@pytest.mark.parametrize("dense_weight_grad", [False, True])
def test_the_sparse_product_and_its_gradients_are_the_dense_ones(dense, bias, dense_weight_grad, monkeypatch):
    """Both ways of the weight gradient: the per-categorical sums and the product gradᵀ x."""
    monkeypatch.setattr(onehot, "_dense_weight_grad", lambda rows: dense_weight_grad)
    torch.manual_seed(0)
    layer = nn.Linear(dense + G * C, 6, bias=bias)
    x, hot = _input((2, 7), dense)
    grad = torch.randn(2, 7, 6)
    sparse = onehot.linear(layer, x, hot)
    assert _sparse(sparse)
    sparse_grads = torch.autograd.grad(sparse, list(layer.parameters()), grad)
    plain = layer(x)
    plain_grads = torch.autograd.grad(plain, list(layer.parameters()), grad)
    torch.testing.assert_close(sparse, plain, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(sparse_grads, plain_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_the_weight_gradient_is_the_dense_product_only_for_small_batches_on_several_threads(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert onehot._dense_weight_grad(onehot.DENSE_GRAD_ROWS)
    assert not onehot._dense_weight_grad(onehot.DENSE_GRAD_ROWS + 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert not onehot._dense_weight_grad(1)


def test_the_dense_path_is_taken_where_the_sparse_one_would_differ(monkeypatch):
    layer = nn.Linear(3 + G * C, 6)
    x, hot = _input((4,), 3)
    x.requires_grad_(True)  # an input gradient: the sparse path has none
    out = onehot.linear(layer, x, hot)
    assert not _sparse(out)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert onehot.linear(layer, x.detach(), hot).dtype == torch.bfloat16  # autocast's lowered product
    monkeypatch.setattr(onehot, "ENABLED", False)
    assert not _sparse(onehot.linear(layer, x.detach(), hot))


def test_columns_are_read_back_only_from_exact_one_hots():
    x, hot = _input((5,), 0)
    assert torch.equal(columns(x, C), hot.index)
    nearly = x.clone()
    nearly[0, 1 if x[0, 0] == 1 else 0] = 1e-9         # a second, tiny nonzero
    assert columns(nearly, C) is None
    negative = x.clone()
    negative[2, (hot.index[2, 0] + 1) % C] = -1.0       # max still 1, one entry negative
    assert columns(negative, C) is None
    assert columns(torch.zeros(5, G * C), C) is None    # an initial state's z
    assert columns(x.requires_grad_(True), C) is None   # not a sparse-path input


def test_the_sampler_reports_the_columns_of_its_ones():
    torch.manual_seed(0)
    sample, index = straight_through_sample(torch.randn(3, 6, G * C), C, with_index=True)
    assert index.shape == (3, 6, G)
    assert torch.equal(torch.zeros_like(sample).scatter_(-1, index, 1.0), sample.detach())


def test_states_keep_the_index_only_where_every_state_has_it():
    with_index = State(deter=torch.zeros(2, 3), stoch=torch.zeros(2, 4), index=torch.zeros(2, 1, dtype=torch.long))
    without = State(deter=torch.ones(2, 3), stoch=torch.ones(2, 4))
    assert State.stack([with_index, with_index]).index.shape == (2, 2, 1)
    assert State.stack([with_index, without]).index is None
    assert State.cat([without, with_index]).index is None
    assert with_index.where(torch.tensor([True, False]), without).index is None
    assert with_index[1:].index.shape == (1, 1)


def _rollout_and_update(sparse: bool, monkeypatch, features="sample"):
    monkeypatch.setattr(onehot, "ENABLED", sparse)
    calls = []
    apply = onehot._OneHotLinear.apply
    monkeypatch.setattr(onehot._OneHotLinear, "apply", lambda *args: calls.append(1) or apply(*args))
    torch.manual_seed(0)
    spec = DataSpec((5,), "float32", action_dim=3, discrete=True)
    model = make_world_model("rssm", spec, config_for("rssm", "tiny")).requires_grad_(False)
    ac = ActorCritic(model.feature_dim, spec, ActorCriticConfig(layers=2, units=16))
    posterior, _ = model.observe(torch.randn(8, 4, 5), torch.zeros(8, 4, 3), torch.zeros(8, 4, dtype=torch.bool))
    start = posterior[:, -1]  # exact one-hot z without recorded columns, as a learner's starts
    for _ in range(2):  # the second on weights the first update changed
        imagined = imagine(model, ac.actor, start, 5, features)
        metrics = ac.update(imagined, imagined.features[1:, :, 0].detach())
    # Sparse: every step's prior input (z is a sample whatever the actor reads), and with
    # sampled features every step's actor and both critics.
    assert len(calls) == 2 * (5 + (5 + 2 if features == "sample" else 0) if sparse else 0)
    return imagined, metrics, copy.deepcopy(ac.actor.state_dict()), copy.deepcopy(ac.critic.state_dict())


def test_imagination_and_the_update_are_the_same_with_and_without_the_sparse_path(monkeypatch):
    sparse = _rollout_and_update(True, monkeypatch)
    plain = _rollout_and_update(False, monkeypatch)
    assert sparse[0].onehot is not None and sparse[0].onehot.index.shape[:2] == (6, 8)  # the start's read back too
    assert torch.equal(sparse[0].actions, plain[0].actions)  # the same samples
    torch.testing.assert_close(sparse[0].features, plain[0].features, rtol=1e-5, atol=1e-5)
    for key in ("loss/actor", "loss/critic", "critic/value"):
        assert sparse[1][key] == pytest.approx(plain[1][key], rel=1e-4, abs=1e-6), key
    for mine, theirs in zip(sparse[2:], plain[2:]):  # the networks after their steps
        for name in mine:
            torch.testing.assert_close(mine[name], theirs[name], rtol=1e-4, atol=1e-6)


def test_mean_features_have_no_one_hot_block(monkeypatch):
    imagined = _rollout_and_update(True, monkeypatch, features="mean")[0]
    assert imagined.onehot is None
