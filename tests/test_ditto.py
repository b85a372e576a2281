"""DITTO: the reward against hand-computed values, dynamics backprop with the BC term, the
pixel path, and a learning check on CartPole that can fail (fixed seeds, scored in the env)."""

import math

import numpy as np

import pytest
import torch
from helpers import tiny_world_model

from wmil.algos.ditto import Ditto, DittoConfig
from wmil.data.build import BuildConfig, build_dataset
from wmil.errors import UserError
from wmil.eval.evaluate import evaluate_policy
from wmil.runs import RunDir
from wmil.train.policy import train_policy
from wmil.train.world_model import load_world_model, train_world_model
from wmil.types import Imagined, State

AC = {"log_every": "2", "eval_every": "4", "checkpoint_every": "3", "batch_size": "8", "horizon": "3",
      "eval_starts": "8"}


def test_ditto_reward_by_hand(tmp_path, write_dataset):
    """r_k = sim(s_{k+1}, e_{k+1}) with sim(x, y) = x·y / max(‖x‖, ‖y‖)²: the k-th action is
    rewarded for the state it arrives in (the start earns nothing; the last imagined state is
    rewarded), on h only by default (``reward_features='deter'``, the DITTO authors' reward);
    [h, class probabilities] with 'mean'; [h, sampled one-hots] with 'sample'."""
    from types import SimpleNamespace

    world = write_dataset("im/world-v0", [12, 14, 16, 11])
    expert = write_dataset("im/expert-v0", [10, 9])
    model = load_world_model(tiny_world_model(world, tmp_path / "wm", steps=3))
    D, S = model.config.deter, model.config.stoch * model.config.classes  # tiny: 32, 4 × 4

    def state(*deter):  # (H+1 = 3, B = 1) states with h = deter[k] padded with zeros
        h = torch.zeros(3, 1, D)
        h[:, 0, :2] = torch.tensor(deter)
        stoch = torch.zeros(3, 1, S)
        stoch[..., ::model.config.classes] = 1.0  # one-hot samples: class 0 of every categorical
        return State(deter=h, stoch=stoch, logits=torch.zeros(3, 1, S))  # logits 0: uniform probabilities

    agent, target = state([3.0, 4.0], [1.0, 0.0], [0.0, 1.0]), state([3.0, 0.0], [2.0, 0.0], [1.0, 0.0])
    for overrides, expected in (({}, [2 / 4, 0.0]),                       # h: (1, 0)·(2, 0) / 4; (0, 1) ⟂ (1, 0)
                                ({"reward_features": "deter", "features": "mean"}, [2 / 4, 0.0]),
                                # z part of the mean features: 16 probabilities 1/4, z_E·z_A = ‖z‖² = 1
                                ({"reward_features": "mean"}, [(2 + 1) / (4 + 1), (0 + 1) / (1 + 1)]),
                                # sampled one-hots: z_E·z_A = ‖z‖² = 4 categoricals
                                ({"reward_features": "sample"}, [(2 + 4) / (4 + 4), (0 + 4) / (1 + 4)])):
        config = DittoConfig.preset("tiny", {"horizon": 2, **overrides})
        ditto = Ditto(model, expert, config, torch.device("cpu"))
        imagined = SimpleNamespace(states=agent, deter=agent.deter, features=model.features(agent, config.features))
        reward, similarity = ditto.rewards(imagined, ditto.reward_latent(target))
        assert reward.shape == (2, 1) and similarity.shape == (3, 1)
        torch.testing.assert_close(reward[:, 0], torch.tensor(expected), msg=str(overrides))
        torch.testing.assert_close(reward, similarity[1:])   # the start state's similarity is never a reward


@pytest.mark.parametrize("algo", ["ditto", "dgail"])
def test_dynamics_backprop_and_bc_term_train_and_resume_exactly(tmp_path, write_dataset, algo):
    """Discrete actions through the model (straight-through) plus the BC term, on rssm: the
    actor's gradient is finite, the BC loss is logged, and a resumed run equals an unbroken one
    (the BC minibatches come from the checkpointed generator)."""
    world = write_dataset("im/world-v0", [12, 14, 16, 11])
    expert = write_dataset("im/expert-v0", [10, 9])
    wm = tiny_world_model(world, tmp_path / "wm", steps=3)
    overrides = {**AC, "actor_grad": "dynamics", "bc_weight": "0.5", "bc_batch_size": "8"}
    full = train_policy(algo, wm, expert, out=tmp_path / "full", preset="tiny", steps=6, overrides=overrides,
                        progress=False, device="cpu")
    last = RunDir(tmp_path / "full", "policy").read_metrics()[-1]
    assert math.isfinite(last["loss/bc_nll"]) and math.isfinite(last["actor/grad_norm"]) and last["actor/grad_norm"] > 0
    train_policy(algo, wm, expert, out=tmp_path / "part", preset="tiny", steps=3, overrides=overrides,
                 progress=False, device="cpu")
    resumed = train_policy(algo, wm, expert, out=tmp_path / "part", preset="tiny", steps=6, overrides=overrides,
                           progress=False, device="cpu")
    for key, value in full.actor.state_dict().items():
        torch.testing.assert_close(resumed.actor.state_dict()[key], value, rtol=0, atol=0)


def test_pixel_ditto_runs(tmp_path):
    world = build_dataset(BuildConfig(name="im/pix-v0", env="CartPole-v1", policy="expert", epsilon=[0.5], episodes=3,
                                      pixels=64, grayscale=True, max_episode_steps=14, ref_episodes=0), progress=False)
    wm = tiny_world_model(world, tmp_path / "wm", steps=2)
    out = tmp_path / "pix-ditto"
    train_policy("ditto", wm, world, out=out, preset="tiny", steps=2, overrides=AC, progress=False, device="cpu")
    report = evaluate_policy(out, episodes=1, progress=False, video=True)
    assert report["env"] == "CartPole-v1" and report["episodes"] == 1 and report["videos"]


def test_ditto_learns_cartpole_above_random(tmp_path):
    """Learning check (can fail): with a small world model and 4 demos, DITTO's real-env return
    on CartPole rises clearly above the random policy's (≈ 22) — the environment is used only to
    score. Fixed seeds; the budget is in updates, never in seconds."""
    world = build_dataset(BuildConfig(name="learn/world-v0", env="CartPole-v1", policy="expert",
                                      epsilon=[0.0, 0.3, 0.6, 1.0], episodes=40, ref_episodes=0), progress=False)
    expert = build_dataset(BuildConfig(name="learn/expert-v0", env="CartPole-v1", policy="expert", episodes=4,
                                       seed=10000, ref_episodes=10), progress=False)
    wm = tmp_path / "wm"
    train_world_model(world, model="rssm", preset="tiny", out=wm, steps=1500, device="cpu", progress=False,
                      overrides={"batch_size": "16", "seq_len": "32", "eval_every": "1500", "log_every": "500",
                                 "checkpoint_every": "1500"})
    out = tmp_path / "ditto"
    train_policy("ditto", wm, expert, out=out, preset="tiny", steps=300, device="cpu", progress=False,
                 overrides={"horizon": "15", "batch_size": "64", "units": "64", "actor_lr": "1e-3",
                            "critic_lr": "1e-3", "eval_every": "100", "checkpoint_every": "300"})
    report = evaluate_policy(out, episodes=10, progress=False)
    assert report["return_mean"] > 35, report["returns"]
    assert report["return_mean"] > 1.5 * expert.ref_min_score
    # What DITTO optimises, the DITTO paper's offline metric: the latent distance of its own imagined
    # rollouts from the expert's falls (measured 0.062 at update 100, 0.047 at 300). Expert-action
    # accuracy is not optimised directly; it moved by under 0.01 either way between seeds.
    rows = RunDir(out, "policy").read_metrics()
    distance = [m["eval/latent_distance"] for m in rows if "eval/latent_distance" in m]
    assert distance[-1] < 0.9 * distance[0], distance
    accuracy = [m["eval/action_accuracy"] for m in rows if "eval/action_accuracy" in m]
    assert accuracy[-1] > 0.6, accuracy  # CartPole's two actions: chance is 0.5


def test_early_starts_draw_that_share_of_starts_from_each_episodes_first_steps(tmp_path, write_dataset):
    """``early_starts=f``: a share f of each batch starts within the first H steps of an episode;
    0 (the default) draws uniformly over every start row as before."""
    world = write_dataset("es/world-v0", [12, 14, 16, 11])
    expert = write_dataset("es/expert-v0", [40, 30, 50])
    model = load_world_model(tiny_world_model(world, tmp_path / "wm", steps=2))
    for share in (0.0, 0.5, 1.0):
        config = DittoConfig.preset("tiny", {"horizon": 3, "batch_size": 64, "early_starts": share, "starts": "expert"})
        ditto = Ditto(model, expert, config, torch.device("cpu"))
        seen = []
        window = ditto.expert.window
        ditto.expert.window = lambda rows, h: seen.append(rows) or window(rows, h)
        for _ in range(20):
            ditto.sample_starts()
        rows = np.concatenate(seen)
        offsets = ditto.expert.offsets
        t = rows - offsets[np.searchsorted(offsets, rows, side="right") - 1]
        assert len(ditto.early_rows) == 3 * 3  # H = 3 steps of each of 3 episodes
        expected = share + (1 - share) * len(ditto.early_rows) / len(ditto.starts)  # uniform draws hit them too
        assert abs((t < 3).mean() - expected) < 0.06, (share, (t < 3).mean())
    with pytest.raises(UserError, match="early_starts.*starts=expert"):  # world starts draw no expert rows
        Ditto(model, expert, DittoConfig.preset("tiny", {"early_starts": 0.5, "starts": "world"}), torch.device("cpu"))


def test_a_continue_head_discounts_the_imagined_rollout(tmp_path, write_dataset):
    """With a world model that has a continue head, DITTO's (and D-GAIL's) discount of imagined
    step k is γ · P(continue | s_{k+1}); without a head, or with ``continue_discount=false``, it
    is the constant γ. A model sure that every episode ends at once leaves each λ-return its
    first reward alone."""
    from wmil.imagination.actor_critic import imagine

    world = write_dataset("cd/world-v0", [12, 14, 16, 11])
    expert = write_dataset("cd/expert-v0", [10, 9])
    with_head = load_world_model(tiny_world_model(world, tmp_path / "wm-c", steps=2,
                                                  overrides={"continue_head": "true"}))
    without = load_world_model(tiny_world_model(world, tmp_path / "wm", steps=2))
    config = DittoConfig.preset("tiny", {"horizon": 3})
    ditto = Ditto(with_head, expert, config, torch.device("cpu"))
    start, _ = ditto.sample_starts()
    imagined = imagine(with_head, ditto.actor, start, 3, config.features)
    expected = config.gamma * with_head.continue_prob(imagined.states[1:])
    torch.testing.assert_close(ditto.discount(imagined), expected)
    assert ditto.discount(imagined).shape == (3, config.batch_size)
    off = Ditto(with_head, expert, DittoConfig.preset("tiny", {"horizon": 3, "continue_discount": False}),
                torch.device("cpu"))
    assert off.discount(imagined) is None
    headless = Ditto(without, expert, config, torch.device("cpu"))
    assert headless.discount(imagined) is None
    assert ditto.has_continue_head and not headless.has_continue_head

    def no_stacking(self):
        raise AssertionError("the imagined states were stacked")

    with pytest.MonkeyPatch.context() as patch:  # without a head nothing reads every field of a rollout
        patch.setattr(Imagined, "states", property(no_stacking))
        assert "imagine/continue" not in headless.update(0)

    metrics = ditto.update(0)
    assert 0 < metrics["imagine/continue"] < 1
    with_head.continue_prob = lambda state: torch.zeros(state.deter.shape[:-1])
    metrics = ditto.update(1)
    assert metrics["imagine/continue"] == 0
    assert metrics["critic/lambda_return"] == pytest.approx(metrics["reward/mean"], abs=1e-6)


def test_world_starts_are_paired_with_the_nearest_expert_window(tmp_path, write_dataset):
    """``starts='mixed'``: half of each batch starts from world-data states, each rewarded
    against the expert window whose first state is most similar to it under DITTO's own
    similarity on the reward features (checked by brute force over every start row); the world
    states are evenly spaced episodes of the world data, not its first ones."""
    from wmil.imagination.metrics import ditto_similarity

    world = write_dataset("ws/world-v0", [12, 14, 16, 11, 13, 15, 17, 10])
    expert = write_dataset("ws/expert-v0", [10, 9, 12])
    model = load_world_model(tiny_world_model(world, tmp_path / "wm", steps=3))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    H, B = 3, 8
    torch.manual_seed(0)
    ditto = Ditto(model, expert, DittoConfig.preset("tiny", {"horizon": H, "batch_size": B, "starts": "mixed",
                                                              "world_episodes": 4}), torch.device("cpu"))
    assert ditto.world.n_obs.tolist() == [12 + 1, 16 + 1, 15 + 1, 10 + 1]  # episodes 0, 2, 5, 7 of 8 (T + 1 obs)
    start, window = ditto.sample_starts()
    assert start.deter.shape[0] == B and window.shape[:2] == (H + 1, B)
    expert_h, world_h = ditto.expert.states.deter, ditto.world.states.deter
    # The expert half: the start is the window's first state, as without the option.
    for b in range(B // 2):
        assert bool((expert_h == start.deter[b]).all(-1).any())
        torch.testing.assert_close(window[0, b], start.deter[b])
    candidates = ditto.expert_latent[torch.as_tensor(ditto.starts)]
    for b in range(B // 2, B):
        assert bool((world_h == start.deter[b]).all(-1).any())
        best = ditto.starts[int(ditto_similarity(candidates, start.deter[b][None]).argmax())]
        torch.testing.assert_close(window[:, b], ditto.expert_latent[best:best + H + 1])
    metrics = ditto.update(0)
    assert 0 < metrics["reward/world_match"] <= 1 + 1e-6
    assert all(np.isfinite(v) for k, v in metrics.items() if k.startswith("loss/"))


def test_world_starts_leave_out_first_rows_whose_h_is_the_initial_state(tmp_path, write_dataset):
    """On an RSSM, h before an episode's first observation is the initial state for every
    episode, so on h every world episode's first row would tie with every expert first row:
    world starts leave those rows out. With the reward on [h, z] (z sees the observation) they
    stay, and so does every other row."""
    world = write_dataset("wf/world-v0", [12, 14, 16, 11])
    expert = write_dataset("wf/expert-v0", [10, 9])
    model = load_world_model(tiny_world_model(world, tmp_path / "wm", steps=3))
    torch.manual_seed(0)
    config = {"horizon": 3, "batch_size": 8, "starts": "world"}
    on_h = Ditto(model, expert, DittoConfig.preset("tiny", config), torch.device("cpu"))
    first = on_h.world.offsets
    rows = on_h.matchable_world_rows()
    assert not np.isin(first, rows).any()
    np.testing.assert_array_equal(rows, np.setdiff1d(on_h.world.starts(1), first))
    on_hz = Ditto(model, expert, DittoConfig.preset("tiny", {**config, "reward_features": "sample"}),
                  torch.device("cpu"))
    np.testing.assert_array_equal(on_hz.matchable_world_rows(), on_hz.world.starts(1))
