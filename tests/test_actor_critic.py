"""The shared actor-critic's actor gradients: REINFORCE, dynamics backprop (straight-through
one-hots for discrete actions) and their mix, on a model whose next features are the action."""

import math

import pytest
import torch

from wmil.errors import UserError
from wmil.imagination.actor_critic import ActorCritic, ActorCriticConfig, imagine
from wmil.types import DataSpec
from wmil.types import State

SPEC = DataSpec(obs_shape=(3,), obs_dtype="float32", action_dim=3, discrete=True)


class _ActionIsNextState:
    """A 'world model' whose next latent is the action taken (one-hot, with its gradient)."""

    def imagine_step(self, state, action):
        return State(deter=action, stoch=action[..., :0])

    def features(self, state, mode="sample"):
        return state.deter


def _start(batch):
    return State(deter=torch.zeros(batch, 3), stoch=torch.zeros(batch, 0))


def _config(**kw):
    return ActorCriticConfig(**{"layers": 1, "units": 16, "actor_lr": 3e-3, "critic_lr": 3e-3,
                                "entropy_discrete": 1e-3, "target_every": 10, **kw})


@pytest.mark.parametrize("grad, straight", [("auto", False), ("reinforce", False), ("dynamics", True), ("mix", True)])
def test_discrete_actions_carry_gradients_only_for_dynamics_backprop(grad, straight):
    ac = ActorCritic(3, SPEC, _config(actor_grad=grad))
    assert ac.actor.straight_through is straight and ac.backprop is straight
    imagined = imagine(_ActionIsNextState(), ac.actor, _start(8), 3)
    assert torch.allclose(imagined.actions.detach().sum(-1), torch.ones(3, 8))  # still one-hot in value
    assert set(imagined.actions.detach().round().unique().tolist()) <= {0.0, 1.0}
    assert imagined.features.requires_grad is straight
    if straight:
        imagined.features[1:, :, 2].sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ac.actor.parameters())


@pytest.mark.parametrize("grad", ["reinforce", "dynamics", "mix"])
def test_every_actor_gradient_learns_the_rewarded_action(grad):
    """Reward = the next latent's coordinate 2, i.e. 1 for action 2: P(action 2) goes from 1/3
    to near 1 (about 0.99 for each gradient when this was written)."""
    torch.manual_seed(0)
    ac = ActorCritic(3, SPEC, _config(actor_grad=grad))
    model = _ActionIsNextState()
    for _ in range(300):
        imagined = imagine(model, ac.actor, _start(64), 3)
        reward = imagined.features[1:, :, 2]
        ac.update(imagined, reward if ac.backprop else reward.detach())
    probs = torch.softmax(ac.actor.net(torch.eye(3)), -1)[:, 2]
    assert float(probs.min()) > 0.9, probs


def test_actor_grad_options_are_checked():
    with pytest.raises(UserError, match="actor_grad='nope'"):
        ActorCritic(3, SPEC, _config(actor_grad="nope"))
    with pytest.raises(UserError, match="actor_grad_mix"):
        ActorCritic(3, SPEC, _config(actor_grad="mix", actor_grad_mix=1.5))
    continuous = DataSpec(obs_shape=(3,), obs_dtype="float32", action_dim=1, discrete=False,
                          action_low=(-1.0,), action_high=(1.0,))
    with pytest.raises(UserError, match="needs discrete actions"):
        ActorCritic(3, continuous, _config(actor_grad="reinforce"))
    assert ActorCritic(3, continuous, _config()).backprop


def test_bf16_autocast_lowers_the_products_and_still_learns():
    """Under bf16 autocast (``wmil imagine --precision bf16``) the actor's and critic's hidden
    layers run in bfloat16 while their outputs — logits, log-probabilities, values — and so the
    λ-returns and losses are float32; the rewarded action is still learned (as in fp32 above)."""
    from wmil.precision import autocast

    torch.manual_seed(0)
    ac = ActorCritic(3, SPEC, _config(actor_grad="reinforce"))
    model = _ActionIsNextState()
    with autocast("cpu", "bf16"):
        hidden = ac.actor.net.net[:-1](torch.zeros(2, 3))
        imagined = imagine(model, ac.actor, _start(4), 3)
        value = ac.critic(imagined.features)
    assert hidden.dtype == torch.bfloat16, "autocast did not lower the hidden layer"
    assert imagined.log_prob.dtype == imagined.entropy.dtype == value.dtype == torch.float32
    for _ in range(300):
        with autocast("cpu", "bf16"):
            imagined = imagine(model, ac.actor, _start(64), 3)
            metrics = ac.update(imagined, imagined.features[1:, :, 2].detach())
    assert math.isfinite(metrics["loss/actor"]) and math.isfinite(metrics["loss/critic"])
    probs = torch.softmax(ac.actor.net(torch.eye(3)), -1)[:, 2]
    assert float(probs.min()) > 0.9, probs


@pytest.mark.parametrize("grad", ["reinforce", "dynamics"])
def test_lowering_the_features_once_for_both_critics_changes_nothing(grad, monkeypatch):
    """Under bf16 autocast ``update`` lowers the imagined features once for the critic and the
    target critic; two copies updated from the same rollout, one with that step switched off
    (each critic's first product lowers its input itself, as autocast does), end bit for bit
    equal."""
    import copy

    import wmil.imagination.actor_critic as module
    from wmil.precision import autocast

    class ActionThroughAMatrix(_ActionIsNextState):  # features that low precisions round
        mix = torch.randn(3, 3) / 3 + torch.eye(3)

        def imagine_step(self, state, action):
            return super().imagine_step(state, action @ self.mix + 0.1 * state.deter)

    torch.manual_seed(0)
    first = ActorCritic(3, SPEC, _config(actor_grad=grad, layers=2))
    second = copy.deepcopy(first)
    model = ActionThroughAMatrix()
    results = []
    for ac, lowered in ((first, module.lowered_dtype), (second, lambda device_type: None)):
        monkeypatch.setattr(module, "lowered_dtype", lowered)
        torch.manual_seed(1)
        with autocast("cpu", "bf16"):
            for _ in range(3):
                imagined = imagine(model, ac.actor, _start(16), 4)
                reward = imagined.features[1:, :, 2]
                metrics = ac.update(imagined, reward if ac.backprop else reward.detach())
        results.append(metrics)
    assert results[0] == results[1]
    for name, network in first.networks().items():
        for (key, a), b in zip(network.state_dict().items(), second.networks()[name].state_dict().values()):
            assert torch.equal(a, b), (name, key)


@pytest.mark.parametrize("scale", ["batch", "return_range"])
def test_two_halves_with_the_global_batch_statistics_take_the_whole_batch_gradient(scale):
    """Data-parallel actor-critic (synchronised batch statistics): two processes holding half
    the rollouts each, standardising with the statistics ``gather`` returns for the whole
    batch, average to the one-process actor gradient; with their own halves' statistics
    (no ``gather``) they do not."""
    import copy

    from wmil.nets import reducing_gradients
    from wmil.types import Imagined

    torch.manual_seed(0)
    H, B = 3, 8
    features = torch.randn(H + 1, B, 3)
    actions = torch.nn.functional.one_hot(torch.randint(3, (H, B)), 3).float()
    reward = torch.randn(H, B) + torch.arange(B).float()  # rows differ: the halves' statistics differ
    base = ActorCritic(3, SPEC, _config(advantage_scale=scale))

    def rollout(ac, rows):
        logits = ac.actor.net(features[:-1, rows])
        log_prob = (torch.log_softmax(logits, -1) * actions[:, rows]).sum(-1)
        entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
        return Imagined([], features[:, rows], actions[:, rows], log_prob, entropy)

    def actor_gradient(rows, gather=None):
        ac, grads = copy.deepcopy(base), []
        with reducing_gradients(lambda params: grads.append([p.grad.clone() for p in params])):
            ac.update(rollout(ac, rows), reward[:, rows], gather=gather)
        return grads[0]  # the actor's step comes first

    halves = [slice(0, B // 2), slice(B // 2, B)]
    seen = {0: [], 1: []}
    for i, rows in enumerate(halves):  # what each half passes to gather (it does not depend on the answer)
        actor_gradient(rows, lambda x, i=i: seen[i].append(x) or x)
    calls = {i: iter(range(len(seen[i]))) for i in seen}
    synced = [actor_gradient(rows, lambda x, i=i: torch.cat([seen[0][(k := next(calls[i]))], seen[1][k]], 1))
              for i, rows in enumerate(halves)]
    alone = [actor_gradient(rows) for rows in halves]
    whole = actor_gradient(slice(0, B))
    for g_whole, g_a, g_b in zip(whole, *synced):
        torch.testing.assert_close((g_a + g_b) / 2, g_whole, rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose((g_a + g_b) / 2, g_whole, rtol=1e-3, atol=1e-5)
               for g_whole, g_a, g_b in zip(whole, *alone)), "without gather the halves' own statistics differ"
