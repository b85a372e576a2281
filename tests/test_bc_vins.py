"""BC and VINS: conformance (train → load → act → resume), bad input, the math against hand
computations, and learning checks that can fail."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from wmil.algos.base import load_policy, train_policy
from wmil.errors import UserError
from wmil.runs import RunDir

WM_TINY = {"log_every": "2", "eval_every": "4", "checkpoint_every": "4", "batch_size": "4", "seq_len": "8",
           "open_loop_context": "3", "eval_batches": "1"}
RUN_TINY = {"log_every": "2", "eval_every": "2", "checkpoint_every": "2"}


def _write(name, episodes, obs_space, act_space, infos=None):
    from wmil.data import load
    from wmil.data.storage import DatasetWriter, Episode

    with DatasetWriter(name, obs_space, act_space) as writer:
        for e, (obs, actions, terminated) in enumerate(episodes):
            T = len(actions)
            terms, truncs = np.zeros(T, bool), np.zeros(T, bool)
            (terms if terminated else truncs)[-1] = True
            extra = {} if infos is None else {"infos": infos[e]}
            writer.add(Episode(obs, actions, -np.ones(T, np.float32), terms, truncs, seed=e, **extra))
    return load(name)


def reach_episodes(n, seed, epsilon=0.0, max_steps=25, dim=2):
    """A point reaching the origin: s' = s + 0.1 a, a ∈ [−1, 1]^dim; the expert moves halfway to
    the goal each step (a = clip(−5 s)); the episode terminates within 0.05 of the goal."""
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n):
        s = rng.uniform(-1, 1, dim).astype(np.float32)
        obs, actions, terminated = [s], [], False
        for _ in range(max_steps):
            a = np.clip(-5 * s, -1, 1)
            if rng.random() < epsilon:
                a = rng.uniform(-1, 1, dim)
            s = (s + 0.1 * a).astype(np.float32)
            actions.append(a.astype(np.float32))
            obs.append(s)
            if np.linalg.norm(s) < 0.05:
                terminated = True
                break
        episodes.append((np.stack(obs), np.stack(actions), terminated))
    return episodes


BOX2 = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
ACT2 = gym.spaces.Box(-1, 1, (2,), np.float32)


@pytest.fixture
def reach(minari_root):
    expert = _write("tt/reach-expert-v0", reach_episodes(8, 0), BOX2, ACT2)
    world = _write("tt/reach-world-v0", reach_episodes(30, 1, epsilon=0.5), BOX2, ACT2)
    return expert, world


def discrete_episodes(n, seed, length=30):
    """obs ~ N(0, I₄) i.i.d.; the expert's action is the tercile of obs[0]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        obs = rng.normal(size=(length + 1, 4)).astype(np.float32)
        actions = ((obs[:-1, 0] > -0.43).astype(np.int64) + (obs[:-1, 0] > 0.43)).astype(np.int64)
        out.append((obs, actions, False))
    return out


def _train_model(world, tmp_path, model, steps=4):
    from wmil.train.world_model import train_world_model

    out = tmp_path / f"wm-{model}"
    train_world_model(world, model=model, preset="tiny", out=out, steps=steps, overrides=WM_TINY, progress=False,
                      device="cpu")
    return out


def _check_action(action, spec):
    if spec.discrete:
        assert isinstance(action, int) and 0 <= action < spec.action_dim
    else:
        assert isinstance(action, np.ndarray) and action.dtype == np.float32 and action.shape == (spec.action_dim,)
        assert np.all(action >= np.array(spec.action_low) - 1e-6) and np.all(action <= np.array(spec.action_high) + 1e-6)


def _conformance(algo, model_run, expert, tmp_path, steps=4):
    out = tmp_path / f"run-{algo}"
    policy = train_policy(algo, model_run, expert, out=out, preset="tiny", steps=steps, overrides=RUN_TINY,
                          progress=False, device="cpu")
    loaded = load_policy(out)
    spec = expert.spec
    obs = expert.episode(0).observations
    loaded.reset()
    for t in range(3):
        _check_action(loaded.act(obs[t]), spec)
        _check_action(policy.act(obs[t]), spec)
    metrics = loaded.offline_metrics()
    assert all(math.isfinite(v) for v in metrics.values()) and metrics
    # Resume: a longer run continues from the checkpoint and logs one run.
    train_policy(algo, model_run, expert, out=out, preset="tiny", steps=steps + 2, overrides=RUN_TINY,
                 progress=False, device="cpu")
    logged = [m["step"] for m in RunDir(out, "policy").read_metrics()]
    assert logged == list(range(2, steps + 3, 2))
    return out


# ----------------------------------------------------------------------------- conformance


def test_bc_discrete_vector(tmp_path, minari_root):
    expert = _write("tt/disc-v0", discrete_episodes(4, 0, length=12), gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
                    gym.spaces.Discrete(3))
    out = _conformance("bc", None, expert, tmp_path)
    last = RunDir(out, "policy").read_metrics()[-1]
    assert {"loss/bc", "eval/val_loss", "eval/action_accuracy", "eval/best_val_score"} <= set(last)


@pytest.mark.parametrize("loss", ["gaussian", "mse"])
def test_bc_continuous_vector(reach, tmp_path, loss):
    expert, _ = reach
    out = tmp_path / loss
    train_policy("bc", None, expert, out=out, preset="tiny", steps=4, overrides={**RUN_TINY, "continuous_loss": loss},
                 progress=False, device="cpu")
    policy = load_policy(out)
    _check_action(policy.act(expert.episode(0).observations[0]), expert.spec)
    _check_action(policy.act(expert.episode(0).observations[0], deterministic=False), expert.spec)
    assert "eval/action_mse" in policy.offline_metrics()
    if loss == "gaussian":
        _conformance("bc", None, expert, tmp_path)


def test_bc_pixels(tmp_path, minari_root):
    rng = np.random.default_rng(0)
    episodes = [(rng.integers(0, 256, (7, 1, 64, 64), dtype=np.uint8), rng.integers(0, 2, 6), False) for _ in range(3)]
    expert = _write("tt/pix-v0", episodes, gym.spaces.Box(0, 255, (1, 64, 64), np.uint8), gym.spaces.Discrete(2))
    _conformance("bc", None, expert, tmp_path, steps=2)


def test_vins_dynamics(reach, tmp_path):
    expert, world = reach
    model = _train_model(world, tmp_path, "dynamics")
    out = _conformance("vins", model, expert, tmp_path)
    last = RunDir(out, "policy").read_metrics()[-1]
    assert {"loss/td", "loss/ns", "loss/bc", "eval/ns_rank", "eval/td_order", "eval/vins_action_mse"} <= set(last)


def test_vins_latent_rssm(reach, tmp_path):
    expert, world = reach
    model = _train_model(world, tmp_path, "rssm", steps=2)
    out = _conformance("vins", model, expert, tmp_path, steps=2)
    assert "eval/ns_rank" in RunDir(out, "policy").read_metrics()[-1]


def test_vins_discrete_dynamics_scores_every_action(tmp_path, minari_root):
    space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    expert = _write("tt/de-v0", discrete_episodes(3, 0, length=10), space, gym.spaces.Discrete(3))
    world = _write("tt/dw-v0", discrete_episodes(6, 1, length=10), space, gym.spaces.Discrete(3))
    model = _train_model(world, tmp_path, "dynamics", steps=2)
    _conformance("vins", model, expert, tmp_path, steps=2)


# ----------------------------------------------------------------------------- bad input


def test_vins_bad_input(reach, tmp_path, minari_root):
    from wmil.algos.vins import VINS, VINSConfig

    expert, world = reach
    with pytest.raises(UserError, match="--model"):
        train_policy("vins", None, expert, out=tmp_path / "a", preset="tiny", steps=2, progress=False)
    rng = np.random.default_rng(0)
    pixels = _write("tt/vpix-v0", [(rng.integers(0, 256, (5, 1, 64, 64), dtype=np.uint8), rng.integers(0, 2, 4), False)],
                    gym.spaces.Box(0, 255, (1, 64, 64), np.uint8), gym.spaces.Discrete(2))
    with pytest.raises(UserError, match="--model"):
        train_policy("vins", None, pixels, out=tmp_path / "b", preset="tiny", steps=2, progress=False)
    with pytest.raises(UserError, match="--model"):
        VINS(None, pixels, VINSConfig(), torch.device("cpu"))
    model = _train_model(world, tmp_path, "dynamics", steps=2)
    with pytest.raises(UserError, match="state_indices"):
        train_policy("vins", model, expert, out=tmp_path / "c", preset="tiny", steps=2, progress=False,
                     overrides={"state_indices": "0,7"})
    with pytest.raises(UserError, match="terminal"):
        train_policy("vins", model, expert, out=tmp_path / "d", preset="tiny", steps=2, progress=False,
                     overrides={"terminal": "sometimes"})


def test_vins_pixels_with_dynamics_model_is_rejected(tmp_path, minari_root):
    from wmil.algos.vins import VINS, VINSConfig
    from wmil.world_models.dynamics import Dynamics, DynamicsConfig
    from wmil.types import DataSpec

    rng = np.random.default_rng(0)
    pixels = _write("tt/vpix2-v0", [(rng.integers(0, 256, (5, 1, 64, 64), dtype=np.uint8), rng.integers(0, 2, 4), False)],
                    gym.spaces.Box(0, 255, (1, 64, 64), np.uint8), gym.spaces.Discrete(2))
    vector_model = Dynamics(DataSpec((3,), "float32", 2, True), DynamicsConfig())
    with pytest.raises(UserError, match="latent world model"):
        VINS(vector_model, pixels, VINSConfig(), torch.device("cpu"))


def test_nan_loss_stops_without_saving(reach, tmp_path, monkeypatch):
    from wmil.algos import vins

    expert, world = reach
    model = _train_model(world, tmp_path, "dynamics", steps=2)
    original = vins.VINS.value_losses

    def poisoned(self, *args):
        losses, metrics = original(self, *args)
        if self.updates >= 2:
            losses = dict(losses, td=losses["td"] * float("nan"))
        return losses, metrics

    monkeypatch.setattr(vins.VINS, "value_losses", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(UserError, match="step 3: loss term 'loss/td' is nan"):
        train_policy("vins", model, expert, out=out, preset="tiny", steps=6, overrides=RUN_TINY, progress=False)
    assert [p.name for p in RunDir(out, "policy").checkpoints()] == ["step_00000002.pt"]


# ----------------------------------------------------------------------------- pure functions


def test_td_target_sparse_reward():
    from wmil.algos.vins import td_target

    reward = torch.tensor([-1.0, -1.0, -1.0])
    next_value = torch.tensor([-4.0, -2.0, -7.0])
    done = torch.tensor([False, True, False])
    # −1 + 0.9·(−4) = −4.6; terminal: −1 + 0 = −1; −1 + 0.9·(−7) = −7.3
    torch.testing.assert_close(td_target(reward, next_value, done, 0.9), torch.tensor([-4.6, -1.0, -7.3]))


def test_interpolation_augmentation():
    from wmil.algos.vins import interpolate_transitions

    s = torch.tensor([[0.0, 2.0], [1.0, 1.0], [4.0, 0.0]])
    s_next = torch.tensor([[1.0, 4.0], [3.0, 1.0], [0.0, 0.0]])
    u = torch.tensor([0.25, 0.0, 1.0])
    mid, reward, discount = interpolate_transitions(s, s_next, u, torch.full((3,), -1.0), 0.81)
    torch.testing.assert_close(mid, torch.tensor([[0.25, 2.5], [1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(reward, torch.tensor([-0.75, -1.0, 0.0]))
    torch.testing.assert_close(discount, torch.tensor([0.81 ** 0.75, 0.81, 1.0]))


def test_negative_sampling_target_and_perturbation():
    from wmil.algos.vins import negative_sampling_loss, perturb

    s = torch.tensor([[1.0, 2.0]])
    noise_std = math.sqrt(0.25) * torch.tensor([2.0, 0.0])        # ρ = 0.25, σ = (2, ·), 2nd not perturbed
    s_tilde = perturb(s, noise_std, torch.tensor([[1.5, 3.0]]))
    torch.testing.assert_close(s_tilde, torch.tensor([[2.5, 2.0]]))
    # V(s) = −3, V(s̃) = −3.2, λ = 2, ‖s − s̃‖ = 1.5: (−3 − 3 + 3.2)² = 7.84
    loss = negative_sampling_loss(torch.tensor([-3.0]), torch.tensor([-3.2]), torch.tensor([1.5]), 2.0)
    torch.testing.assert_close(loss, torch.tensor([7.84]))


def test_value_transitions_terminal_rules():
    from wmil.algos.vins import value_transitions

    n_obs, offsets = np.array([4, 3]), np.array([0, 4])
    is_terminal = np.array([0, 0, 0, 1, 0, 0, 0], bool)
    rows, done = value_transitions(n_obs, offsets, is_terminal, "dataset")
    assert rows.tolist() == [0, 1, 2, 4, 5] and done.tolist() == [False, False, True, False, False]
    rows, done = value_transitions(n_obs, offsets, is_terminal, "last")
    assert done.tolist() == [False, False, True, False, True]
    success = [np.array([0, 0, 1, 1.0]), np.array([0, 0, 0.0])]
    rows, done = value_transitions(n_obs, offsets, is_terminal, "success", success)
    assert rows.tolist() == [0, 1, 4, 5] and done.tolist() == [False, True, False, False]


def test_goal_rows_are_the_terminal_observations():
    from wmil.algos.vins import goal_rows

    n_obs, offsets = np.array([4, 3, 5]), np.array([0, 4, 7])
    is_terminal = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], bool)
    assert goal_rows(n_obs, offsets, is_terminal, "dataset").tolist() == [3]
    assert goal_rows(n_obs, offsets, is_terminal, "last").tolist() == [3, 6, 11]
    assert goal_rows(n_obs, offsets, is_terminal, "none").tolist() == []
    # success from the first hit on (a lapse at row 9 is not a goal; a success at reset is not one either)
    success = [np.array([0, 0, 1, 1.0]), np.array([1, 0, 0.0]), np.array([0, 1, 0, 1, 1.0])]
    assert goal_rows(n_obs, offsets, is_terminal, "success", success).tolist() == [2, 3, 8, 10, 11]


def test_random_shooting_with_known_value_and_model():
    from wmil.algos.vins import select_best, shooting_candidates

    center = torch.tensor([[0.5, 0.0]])
    noise = torch.tensor([[[1.0, 1.0], [-1.0, 0.5], [0.0, -1.0]]])
    candidates = shooting_candidates(center, noise, 0.8, torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0]))
    # 0.5 + 0.8 = 1.3 is clipped to 1
    torch.testing.assert_close(candidates, torch.tensor([[[1.0, 0.8], [-0.3, 0.4], [0.5, -0.8]]]))
    s, goal = torch.tensor([0.0, 0.0]), torch.tensor([-0.2, 0.5])
    values = -torch.linalg.vector_norm(s + candidates - goal, dim=-1)  # V(M(s, a)) with M = s + a
    torch.testing.assert_close(select_best(candidates, values), torch.tensor([[-0.3, 0.4]]))


def test_policy_picks_the_action_the_value_prefers(reach, tmp_path):
    """The deployed VINS policy with a hand-set V: V(s) = −s_x, M the trained dynamics model."""
    from wmil.algos.bc import ActionHead, BCConfig
    from wmil.algos.vins import VINSConfig, vins_actions
    from wmil.train.world_model import load_world_model

    expert, world = reach
    model = load_world_model(_train_model(world, tmp_path, "dynamics", steps=30))
    config = VINSConfig(shooting_samples=64, shooting_alpha=1.0)

    class Right(torch.nn.Module):  # V grows with the first coordinate
        def forward_full(self, x):
            return x[..., 0]

    class Zero(torch.nn.Module):  # π_BC(s) = 0: the search is the paper's option 2
        def __init__(self):
            super().__init__()
            self.head = ActionHead(2, expert.spec, BCConfig(layers=0))

        def act(self, x, deterministic=True):
            return torch.zeros(x.shape[0], 2)

    obs = torch.tensor([[0.3, -0.2]])
    state = model.obs_step(model.initial(1), torch.zeros(1, 2), obs, torch.tensor([True]))
    torch.manual_seed(0)
    action, _ = vins_actions(model, Zero(), Right(), state, obs, expert.spec, config, latent=False)
    assert action[0, 0] > 0.7  # the best of 64 candidates in [−1, 1]² pushes x up


def test_parse_indices():
    from wmil.algos.vins import parse_indices

    assert parse_indices("", 4, "f") == [0, 1, 2, 3]
    assert parse_indices("3, 0:2", 5, "f") == [0, 1, 3]
    with pytest.raises(UserError, match="'f'"):
        parse_indices("x", 4, "f")


def test_bc_loss_values():
    from wmil.algos.bc import bc_loss

    logits = torch.tensor([[0.0, math.log(3.0)]])   # p = (1/4, 3/4)
    torch.testing.assert_close(bc_loss(logits, torch.tensor([[0.0, 1.0]]), True), torch.tensor([-math.log(0.75)]))
    output = torch.tensor([[1.0, 0.0, 2.0, 1.0]])   # mean (1, 0), std (2, 1)
    target = torch.tensor([[2.0, 1.0]])
    expected = 0.5 * 0.25 + math.log(2.0) + 0.5 * 1.0
    torch.testing.assert_close(bc_loss(output, target, False, "gaussian"), torch.tensor([expected]))
    torch.testing.assert_close(bc_loss(output[:, :2], target, False, "mse"), torch.tensor([1.0]))


# ----------------------------------------------------------------------------- learning checks


def test_bc_learns_a_function_of_the_observation(tmp_path, minari_root):
    expert = _write("tt/learn-v0", discrete_episodes(10, 0), gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
                    gym.spaces.Discrete(3))
    out = tmp_path / "learn"
    train_policy("bc", None, expert, out=out, preset="tiny", steps=300, seed=0, progress=False, device="cpu",
                 overrides={"units": "64", "lr": "3e-3", "log_every": "50", "eval_every": "50",
                            "checkpoint_every": "300"})
    last = RunDir(out, "policy").read_metrics()[-1]
    assert last["eval/action_accuracy"] >= 0.9, last   # on held-out episodes
    assert last["eval/best_val_score"] <= last["eval/val_loss"] + 1e-9


def test_vins_value_ranks_demo_states_above_perturbed_ones(tmp_path, minari_root):
    """Demos are a few curves in 6-D (a low-dimensional set, the paper's setting): after a short
    training V is higher on demo states than on their Gaussian perturbations, and rises along
    the demos towards the goal."""
    box = gym.spaces.Box(-np.inf, np.inf, (6,), np.float32)
    act = gym.spaces.Box(-1, 1, (6,), np.float32)
    expert = _write("tt/reach6-expert-v0", reach_episodes(6, 0, dim=6), box, act)
    world = _write("tt/reach6-world-v0", reach_episodes(10, 1, epsilon=0.5, dim=6), box, act)
    model = _train_model(world, tmp_path, "dynamics", steps=2)
    out = tmp_path / "rank"
    train_policy("vins", model, expert, out=out, preset="tiny", steps=150, seed=0, progress=False, device="cpu",
                 overrides={"value_lr": "3e-3", "eval_states": "128", "log_every": "150", "eval_every": "150",
                            "checkpoint_every": "150"})
    last = RunDir(out, "policy").read_metrics()[-1]
    assert last["eval/ns_rank"] >= 0.75, last
    assert last["eval/td_order"] >= 0.65, last
    # Without the negative-sampling loss the same check fails: TD alone does not extrapolate.
    ablation = tmp_path / "no-ns"
    train_policy("vins", model, expert, out=ablation, preset="tiny", steps=150, seed=0, progress=False, device="cpu",
                 overrides={"value_lr": "3e-3", "eval_states": "128", "log_every": "150", "eval_every": "150",
                            "checkpoint_every": "150", "ns_weight": "0"})
    assert RunDir(ablation, "policy").read_metrics()[-1]["eval/ns_rank"] < 0.7


def test_vins_resume_is_exact(reach, tmp_path):
    expert, world = reach
    model = _train_model(world, tmp_path, "dynamics", steps=2)
    kwargs = dict(preset="tiny", overrides={**RUN_TINY, "checkpoint_every": "3"}, progress=False, device="cpu")
    train_policy("vins", model, expert, out=tmp_path / "full", steps=6, **kwargs)
    train_policy("vins", model, expert, out=tmp_path / "part", steps=3, **kwargs)
    train_policy("vins", model, expert, out=tmp_path / "part", steps=6, **kwargs)
    full, part = (RunDir(tmp_path / name, "policy").load_checkpoint()["algo"] for name in ("full", "part"))
    for key in ("value", "target"):
        for name, value in full[key].items():
            torch.testing.assert_close(part[key][name], value, rtol=0, atol=0, msg=name)
    for name, value in full["bc"]["net"].items():
        torch.testing.assert_close(part["bc"]["net"][name], value, rtol=0, atol=0, msg=name)


def test_vins_success_terminal_from_infos(tmp_path, minari_root):
    """With recorded is_success (Fetch), 'auto' ends each demo at its first success."""
    from wmil.algos.vins import VINS, VINSConfig, PRESETS
    from wmil.train.world_model import load_world_model

    episodes = reach_episodes(2, 0)
    infos = [{"is_success": (np.linalg.norm(obs, axis=1) < 0.3).astype(np.float32)} for obs, _, _ in episodes]
    expert = _write("tt/succ-v0", episodes, BOX2, ACT2, infos=infos)
    world = _write("tt/succ-world-v0", reach_episodes(6, 1, epsilon=0.5), BOX2, ACT2)
    model = load_world_model(_train_model(world, tmp_path, "dynamics", steps=2))
    learner = VINS(model, expert, VINSConfig(**PRESETS["tiny"]), torch.device("cpu"))
    assert learner.terminal == "success"
    first = [int(np.flatnonzero(info["is_success"][1:] > 0)[0]) + 1 for info in infos]
    assert len(learner.rows) == sum(first) and int(learner.done.sum()) == 2


def test_bc_keeps_the_best_parameters_and_stops(tmp_path, minari_root):
    from wmil.algos.bc import BCConfig, BCNet, BCTrainer, demo_pairs, split_demos

    expert = _write("tt/best-v0", discrete_episodes(4, 0, length=12), gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
                    gym.spaces.Discrete(3))
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
    from wmil.algos.bc import BCConfig, BCNet, BCTrainer, demo_pairs, selection_key, split_demos

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


def test_vins_keeps_the_value_function_experts_prefer(reach, tmp_path):
    """value_selection='preference': the deployed V is the one with the best held-out
    eval/expert_preferred, which the checkpoint carries; 'last' deploys the newest V."""
    expert, world = reach
    model = _train_model(world, tmp_path, "dynamics")
    for selection in ("preference", "last"):
        out = tmp_path / f"vins-{selection}"
        train_policy("vins", model, expert, out=out, preset="tiny", steps=12, progress=False, device="cpu",
                     overrides={**RUN_TINY, "eval_every": "2", "checkpoint_every": "12", "value_selection": selection})
        logged = [m["eval/expert_preferred"] for m in RunDir(out, "policy").read_metrics() if "eval/expert_preferred" in m]
        assert len(logged) == 6 and all(0.0 <= p <= 1.0 for p in logged)
        state = torch.load(RunDir(out, "policy").checkpoints()[-1], weights_only=False)["algo"]
        deployed = load_policy(out).value.state_dict()
        if selection == "preference":
            assert state["best_preference"] == max(logged)
            kept = state["best_value"]
        else:
            assert state["best_value"] is None
            kept = state["value"]
        for name, value in deployed.items():
            torch.testing.assert_close(value, kept[name])
