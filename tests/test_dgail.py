"""D-GAIL / VMAIL: the discriminator's pure functions against hand-computed values, reward
alignment and gradients, option checks, and learning checks that can fail (fixed seeds)."""

import math

import numpy as np
import pytest
import torch
from helpers import IIDModel, function_expert

from wmil.algos.dgail import DGail, DGailConfig, discriminator_loss, discriminator_reward, gradient_penalty
from wmil.errors import UserError
from wmil.imagination.actor_critic import imagine
from wmil.train.policy import train_policy


def test_discriminator_reward_by_hand():
    logits = torch.tensor([0.0, math.log(3), -math.log(3)])
    torch.testing.assert_close(discriminator_reward(logits, "prob"), torch.tensor([0.5, 0.75, 0.25]))
    # −log(1 − D): D = 0.5, 0.75, 0.25 → log 2, log 4, log 4/3.
    torch.testing.assert_close(discriminator_reward(logits, "logd"),
                               torch.tensor([math.log(2), math.log(4), math.log(4 / 3)]))
    assert torch.isfinite(discriminator_reward(torch.tensor([100.0]), "logd")).all()
    with pytest.raises(ValueError):
        discriminator_reward(logits, "nope")


def test_discriminator_loss_by_hand():
    # D = 0.5 everywhere: −log 0.5 per class.
    assert float(discriminator_loss(torch.zeros(4), torch.zeros(3))) == pytest.approx(2 * math.log(2))
    # expert D = 0.75, imagined D = 0.25: −log 0.75 − log 0.75.
    value = discriminator_loss(torch.tensor([math.log(3)]), torch.tensor([-math.log(3)]))
    assert float(value) == pytest.approx(-2 * math.log(0.75))


def test_gradient_penalty_on_linear_discriminator():
    linear = torch.nn.Linear(2, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[3.0, 4.0]]))  # ∇_x logit = w everywhere, ‖w‖ = 5
        linear.bias.fill_(0.7)
    disc = lambda x: linear(x).squeeze(-1)  # noqa: E731
    expert, policy = torch.randn(6, 2), torch.randn(6, 2)
    penalty = gradient_penalty(disc, expert, policy, "interpolate")
    assert float(penalty.detach()) == pytest.approx((5 - 1) ** 2)
    assert float(gradient_penalty(disc, expert, policy, "expert").detach()) == pytest.approx(25.0)
    # The penalty trains D: d/dw (‖w‖ − 1)² = 2 (‖w‖ − 1) w / ‖w‖ = 8 · (0.6, 0.8).
    penalty.backward()
    torch.testing.assert_close(linear.weight.grad, torch.tensor([[4.8, 6.4]]))
    with pytest.raises(ValueError):
        gradient_penalty(disc, expert, policy, "nope")


def test_gradient_penalty_interpolates_between_expert_and_policy():
    disc = lambda x: 0.5 * (x ** 2).sum(-1)  # noqa: E731  ∇ = x
    expert, policy = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    # ε = 0.5 → x̂ = (1, 0), ‖∇‖ = 1 → 0;  ε = 1 → x̂ = expert → (2 − 1)² = 1;  ε = 0 → (0 − 1)² = 1.
    penalty = lambda *args, **kw: float(gradient_penalty(disc, *args, **kw).detach())  # noqa: E731
    assert penalty(expert, policy, mix=torch.tensor([0.5])) == pytest.approx(0.0, abs=1e-6)
    assert penalty(expert, policy, mix=torch.tensor([1.0])) == pytest.approx(1.0)
    assert penalty(expert, policy, mix=torch.tensor([0.0])) == pytest.approx(1.0, abs=1e-5)  # sqrt(0 + 1e-12)
    assert penalty(torch.tensor([[0.0, 3.0]]), policy, "expert") == pytest.approx(9.0)


def test_dgail_rejects_unknown_options(synthetic_worlds, tmp_path):
    wm_dir, dataset, _ = synthetic_worlds("rssm", True)
    with pytest.raises(UserError, match="pair"):
        train_policy("dgail", wm_dir, dataset, out=tmp_path / "x", preset="tiny", steps=1, device="cpu",
                     overrides={"pair": "zzz"}, progress=False)
    for algo in ("dgail", "ditto"):
        with pytest.raises(UserError, match="bc_weight=-1.0 must be at least 0"):
            train_policy(algo, wm_dir, dataset, out=tmp_path / f"y-{algo}", preset="tiny", steps=1, device="cpu",
                         overrides={"bc_weight": "-1"}, progress=False)


def _dgail(synthetic_worlds, model, discrete, **overrides):
    _, dataset, world_model = synthetic_worlds(model, discrete)
    torch.manual_seed(0)
    return DGail(world_model, dataset, DGailConfig.preset("tiny", overrides), torch.device("cpu"))


@pytest.mark.parametrize("pair", ["zz", "zaz"])
def test_dgail_reward_alignment_and_gradients(synthetic_worlds, pair):
    learner = _dgail(synthetic_worlds, "gaussian_rssm", False, pair=pair, reward_features=None)  # D reads [h, z]
    H, B = learner.config.horizon, 4
    start, _ = learner.expert.sample(learner.starts[:B], H)
    imagined = imagine(learner.world_model, learner.actor, start, H)
    transitions = learner.imagined_transitions(imagined)
    F, A = imagined.features.shape[-1], imagined.actions.shape[-1]
    assert transitions.shape == (H, B, 2 * F + (A if pair == "zaz" else 0))
    # Reward k belongs to the transition from imagined state k into state k+1.
    torch.testing.assert_close(transitions[..., :F], imagined.features[:-1])
    torch.testing.assert_close(transitions[..., -F:], imagined.features[1:])
    reward = learner.reward(transitions)
    assert reward.shape == (H, B) and ((reward > 0) & (reward < 1)).all()
    # Continuous actions: the reward reaches the actor through the model, never the discriminator.
    reward.sum().backward()
    assert all(p.grad is None for p in learner.discriminator.parameters())
    assert all(p.requires_grad for p in learner.discriminator.parameters())
    grads = [p.grad for p in learner.actor.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_dgail_discriminator_reads_h_by_default(synthetic_worlds):
    """The DITTO authors' D-GAIL feeds the discriminator (h_t, h_{t+1}): the default
    ``reward_features='deter'``, whatever the actor reads."""
    learner = _dgail(synthetic_worlds, "rssm", True)
    H, B, D = learner.config.horizon, 3, learner.world_model.config.deter
    start, _ = learner.expert.sample(learner.starts[:B], H)
    imagined = imagine(learner.world_model, learner.actor, start, H)
    transitions = learner.imagined_transitions(imagined)
    assert transitions.shape == (H, B, 2 * D)
    torch.testing.assert_close(transitions[..., :D], imagined.states.deter[:-1])
    torch.testing.assert_close(transitions[..., D:], imagined.states.deter[1:])


def test_dgail_expert_pairs_stay_inside_episodes(synthetic_worlds):
    learner = _dgail(synthetic_worlds, "rssm", True, pair="zaz")
    ends = learner.expert.offsets + learner.expert.n_obs - 1  # last observation of each episode
    assert not np.isin(learner.action_rows, ends).any()
    assert len(learner.action_rows) == int(learner.expert.action_mask.sum()) == sum(n - 1 for n in learner.expert.n_obs)
    rows, next_rows = learner.expert.transitions(learner.action_rows)
    assert torch.equal(next_rows, rows + 1)


def test_dgail_discriminator_learns(synthetic_worlds):
    """The discriminator tells expert posterior transitions from the actor's imagined ones."""
    learner = _dgail(synthetic_worlds, "gaussian_rssm", True, input_noise=0.0, gp_weight=1.0)
    accuracy = [learner.update(step)["disc/accuracy"] for step in range(1, 61)]
    assert np.mean(accuracy[-10:]) > 0.6, accuracy


def test_dgail_imitates_with_an_ideal_model(tmp_path, monkeypatch):
    """With (z, a, z') pairs and a model that is exactly right, the adversarial reward alone
    teaches a = [obs[0] > 0] (≈ 0.5 before; ≈ 0.97 after 900 updates with per-batch advantage
    standardisation, the default since #11; 0.98 after 600 with the return-range scale before)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    dataset = function_expert("dgtest/iid-v0", True, [30] * 10, seed=3)
    torch.manual_seed(0)
    config = DGailConfig.preset("tiny", {"pair": "zaz", "reward": "logd", "horizon": 3, "batch_size": 32,
                                         "actor_lr": 1e-3, "critic_lr": 1e-3, "target_every": 20, "gp_weight": 1.0,
                                         "input_noise": 0.0, "disc_units": 64, "entropy_discrete": 0.005})
    learner = DGail(IIDModel(dataset.spec), dataset, config, torch.device("cpu"))
    before = learner.evaluate()["eval/action_accuracy"]
    for step in range(1, 901):
        learner.update(step)
    after = learner.evaluate()["eval/action_accuracy"]
    assert after > 0.9, (before, after)
