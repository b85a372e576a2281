"""Behaviour cloning (wmil.algos.bc and the supervised component it shares with VINS):
continuous losses, pixels, model selection, bad settings, and a learning check that can fail."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import BOX4, RUN_TINY, check_action, discrete_episodes, train_load_act, write_episodes

from wmil.algos.supervised import BCConfig, BCNet, BCTrainer, bc_loss, demo_pairs, selection_key, split_demos
from wmil.errors import UserError
from wmil.eval.offline import offline_metrics
from wmil.runs import RunDir
from wmil.train.policy import load_policy, train_policy


@pytest.mark.parametrize("loss", ["gaussian", "mse"])
def test_bc_continuous_vector(reach, tmp_path, loss):
    expert, _ = reach
    out = tmp_path / loss
    train_policy("bc", None, expert, out=out, preset="tiny", steps=4, overrides={**RUN_TINY, "continuous_loss": loss},
                 progress=False, device="cpu")
    policy = load_policy(out)
    check_action(policy.act(expert.episode(0).observations[0]), expert.spec)
    check_action(policy.act(expert.episode(0).observations[0], deterministic=False), expert.spec)
    assert "eval/action_mse" in offline_metrics(policy)
    last = RunDir(out, "policy").read_metrics()[-1]
    assert {"loss/bc", "eval/val_loss", "eval/action_mse", "eval/best_val_score"} <= set(last)


def test_bc_mse_acts_with_its_mode_when_sampled(reach, tmp_path):
    """An 'mse' BC trains only the mode (its head's std is never trained), so a sample would be
    noise of an arbitrary scale: it acts with its mode under 'sample' too, and says so; a
    'gaussian' BC still samples."""
    expert, _ = reach
    obs = np.stack([expert.episode(0).observations[0]] * 8)
    first = [True] * 8
    for loss in ("mse", "gaussian"):
        out = tmp_path / loss
        train_policy("bc", None, expert, out=out, preset="tiny", steps=4, progress=False, device="cpu",
                     overrides={**RUN_TINY, "continuous_loss": loss})
        policy = load_policy(out)
        torch.manual_seed(0)
        sampled = np.stack(policy.act_batch(obs, first, deterministic=False))
        greedy = np.stack(policy.act_batch(obs, first, deterministic=True))
        assert policy.stochastic is (loss == "gaussian")
        if loss == "mse":
            np.testing.assert_array_equal(sampled, greedy)
        else:
            assert np.abs(sampled - greedy).max() > 1e-3
            assert np.abs(sampled - sampled[0]).max() > 1e-3


def test_bc_pixels(tmp_path, minari_root):
    rng = np.random.default_rng(0)
    episodes = [(rng.integers(0, 256, (7, 1, 64, 64), dtype=np.uint8), rng.integers(0, 2, 6), False) for _ in range(3)]
    expert = write_episodes("tt/pix-v0", episodes, gym.spaces.Box(0, 255, (1, 64, 64), np.uint8), gym.spaces.Discrete(2))
    train_load_act("bc", None, expert, tmp_path / "run", steps=2)


def test_bc_bad_settings(tmp_path, minari_root):
    expert = write_episodes("tt/bad-v0", discrete_episodes(2, 0, length=5), BOX4, gym.spaces.Discrete(3))
    with pytest.raises(UserError, match="'selection'.*needs continuous actions"):
        train_policy("bc", None, expert, out=tmp_path / "a", preset="tiny", steps=1, progress=False,
                     overrides={"selection": "action"})
    with pytest.raises(UserError, match="continuous_loss='huber' is not one of"):
        train_policy("bc", None, expert, out=tmp_path / "b", preset="tiny", steps=1, progress=False,
                     overrides={"continuous_loss": "huber"})


def test_bc_loss_values():
    """Cross-entropy for discrete actions; for continuous ones the shared squashed Gaussian's
    negative log-likelihood, or the squared error of its mode."""
    from wmil.config import ActorConfig
    from wmil.nets import ActionHead
    from wmil.types import DataSpec

    discrete = ActionHead(2, DataSpec((2,), "float32", 2, True), ActorConfig(layers=0))
    with torch.no_grad():
        discrete.net.net[-1].weight.zero_()
        discrete.net.net[-1].bias.copy_(torch.tensor([0.0, math.log(3.0)]))   # p = (1/4, 3/4)
    x = torch.zeros(1, 2)
    torch.testing.assert_close(bc_loss(discrete, x, torch.tensor([[0.0, 1.0]])), torch.tensor([-math.log(0.75)]))
    continuous = ActionHead(2, DataSpec((2,), "float32", 1, False, (-2.0,), (2.0,)), ActorConfig(layers=0))
    with torch.no_grad():
        continuous.net.net[-1].weight.zero_()      # mode 2·tanh(0.5); pre-tanh std softplus(raw) + 0.1 = 1
        continuous.net.net[-1].bias.copy_(torch.tensor([0.5, math.log(math.expm1(0.9))]))
    target = torch.tensor([[0.0]])                   # u = atanh(0) = 0: ½·0.5² + ½ log 2π + log(2·(1 − tanh² 0))
    expected = 0.5 * 0.25 + 0.5 * math.log(2 * math.pi) + math.log(2.0)
    torch.testing.assert_close(bc_loss(continuous, x, target, "gaussian"), torch.tensor([expected]))
    torch.testing.assert_close(bc_loss(continuous, x, target, "mse"), torch.tensor([(2 * math.tanh(0.5)) ** 2]))


def test_bc_learns_a_function_of_the_observation(tmp_path, minari_root):
    expert = write_episodes("tt/learn-v0", discrete_episodes(10, 0), BOX4, gym.spaces.Discrete(3))
    out = tmp_path / "learn"
    train_policy("bc", None, expert, out=out, preset="tiny", steps=300, seed=0, progress=False, device="cpu",
                 overrides={"units": "64", "actor_lr": "3e-3", "log_every": "50", "eval_every": "50",
                            "checkpoint_every": "300"})
    last = RunDir(out, "policy").read_metrics()[-1]
    assert last["eval/action_accuracy"] >= 0.9, last   # on held-out episodes
    assert last["eval/best_val_score"] <= last["eval/val_loss"] + 1e-9


def test_bc_keeps_the_best_parameters_and_stops(tmp_path, minari_root):
    expert = write_episodes("tt/best-v0", discrete_episodes(4, 0, length=12), BOX4, gym.spaces.Discrete(3))
    config = BCConfig(layers=1, units=16, batch_size=8, patience=1)
    train, val = split_demos(expert, config)
    assert len(val) == 1 and len(train) == 3
    trainer = BCTrainer(BCNet((4,), expert.spec, config), demo_pairs(train), demo_pairs(val), config, expert.spec,
                        torch.device("cpu"))
    first = trainer.evaluate(step=1)
    kept = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    with torch.no_grad():
        trainer.net.head.net.net[-1].bias.copy_(torch.tensor([50.0, -50.0, -50.0]))  # a much worse policy
    second = trainer.evaluate(step=2)
    assert second["eval/val_loss"] > first["eval/val_loss"] and second["eval/best_step"] == 1
    for name, value in trainer.best_net().state_dict().items():
        torch.testing.assert_close(value, kept[name])
    assert trainer.stopped
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    assert trainer.update(np.random.default_rng(0))["bc/stopped"] == 1.0
    for name, value in trainer.net.state_dict().items():
        torch.testing.assert_close(value, before[name])


def test_bc_selection_follows_the_deployed_action_for_continuous_actions(reach):
    """A Gaussian head whose mean gets better while its std collapses: its held-out likelihood
    worsens, its mean action improves. 'auto' (= 'action' for continuous) keeps the better
    mean; 'loss' keeps the better likelihood."""
    expert, _ = reach
    assert selection_key(BCConfig(), expert.spec) == "action_mse"
    assert selection_key(BCConfig(selection="loss"), expert.spec) == "loss"
    with pytest.raises(UserError, match="'selection'"):
        selection_key(BCConfig(selection="best"), expert.spec)
    kept = {}
    for selection in ("auto", "loss"):
        config = BCConfig(layers=1, units=16, batch_size=8, selection=selection)
        train, val = split_demos(expert, config)
        trainer = BCTrainer(BCNet(expert.spec.obs_shape, expert.spec, config), demo_pairs(train), demo_pairs(val),
                            config, expert.spec, torch.device("cpu"))
        last = trainer.net.head.net.net[-1]
        with torch.no_grad():                    # mean 0, wide std
            last.weight.zero_()
            last.bias.zero_()
        first = trainer.evaluate(step=1)
        target = trainer.val.action.mean(0).clamp(-0.99, 0.99)
        with torch.no_grad():                    # the mean moves to the average action, std collapses
            last.bias.copy_(torch.cat([torch.atanh(target), torch.full_like(target, -5.0)]))
        second = trainer.evaluate(step=2)
        assert second["eval/action_mse"] < first["eval/action_mse"]
        assert second["eval/val_loss"] > first["eval/val_loss"]
        kept[selection] = second["eval/best_step"]
    assert kept == {"auto": 2.0, "loss": 1.0}
