"""Covariate-shift evaluation protocols (wmil.envs.protocols) and their use in ``evaluate``:
shifted starts through the env's own state, reproducible by seed; action and observation
noise; scores normalised by the expert under the same protocol; the action convention."""

import numpy as np
import pytest

from wmil.envs import EnvConfig, make_env
from wmil.envs.protocols import Protocol
from wmil.errors import UserError


def _starts(env_id, protocol, seeds):
    env = make_env(EnvConfig(env_id), protocol)
    try:
        return np.stack([env.reset(seed=s)[0] for s in seeds])
    finally:
        env.close()


def test_shifted_starts_are_where_the_demos_are_not_and_reproducible():
    seeds = range(40)
    shifted = Protocol(starts="shifted")
    cart = _starts("CartPole-v1", shifted, seeds)
    assert np.all((np.abs(cart[:, 0]) >= 0.5) & (np.abs(cart[:, 0]) <= 1.5))
    assert np.all((np.abs(cart[:, 2]) >= 0.08) & (np.abs(cart[:, 2]) <= 0.15))
    assert np.all(np.abs(_starts("CartPole-v1", None, seeds)) <= 0.05)            # the standard start
    pend = _starts("Pendulum-v1", shifted, seeds)                                    # (cos θ, sin θ, θ')
    assert np.all(pend[:, 0] <= np.cos(np.pi - 0.1) + 1e-6) and np.all(pend[:, 2] == 0)
    lunar, standard = _starts("LunarLander-v3", shifted, seeds), _starts("LunarLander-v3", None, seeds)
    assert np.all(np.abs(lunar[:, 2]) > np.abs(standard[:, 2]) + 0.7)               # a push of ≥ 4 m/s, outward
    assert np.abs(lunar[:, 5]).mean() > 1.5 * np.abs(standard[:, 5]).mean()          # the spin
    assert np.array_equal(lunar, _starts("LunarLander-v3", shifted, seeds))          # same seeds, same starts
    assert not np.array_equal(lunar[:5], _starts("LunarLander-v3", shifted, range(5, 10)))


def test_unknown_protocols_are_one_line_errors():
    with pytest.raises(UserError, match="MountainCar-v0 has no shifted-start protocol; environments with one: "
                                        "CartPole, LunarLander, Pendulum"):
        make_env(EnvConfig("MountainCar-v0"), Protocol(starts="shifted"))
    with pytest.raises(UserError, match="--starts 'sideways'"):
        Protocol(starts="sideways")
    with pytest.raises(UserError, match="--action-noise 1.5"):
        Protocol(action_noise=1.5)


def test_action_and_observation_noise():
    env = make_env(EnvConfig("CartPole-v1", max_episode_steps=500), Protocol(action_noise=1.0, obs_noise=0.0))
    clean = make_env(EnvConfig("CartPole-v1", max_episode_steps=500))
    # Always pushing left ends a clean episode in ~10 steps; with every action random it lasts longer on average.
    lengths = []
    for e in (env, clean):
        total = 0
        for seed in range(20):
            e.reset(seed=seed)
            done, steps = False, 0
            while not done:
                _, _, terminated, truncated, _ = e.step(0)
                done, steps = terminated or truncated, steps + 1
            total += steps
        lengths.append(total / 20)
    assert lengths[0] > 1.5 * lengths[1], lengths
    noisy = make_env(EnvConfig("CartPole-v1"), Protocol(obs_noise=0.5))
    differences = np.stack([noisy.reset(seed=s)[0] - clean.reset(seed=s)[0] for s in range(200)])
    assert abs(differences.std() - 0.5) < 0.05
    assert np.array_equal(noisy.reset(seed=3)[0], noisy.reset(seed=3)[0])              # reproducible by seed


def test_evaluation_under_a_protocol_is_normalised_by_the_expert_under_it(env_worlds, tmp_path, monkeypatch):
    from wmil.eval.evaluate import evaluate_policy
    from wmil.train.policy import train_policy

    world = env_worlds(True)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(world.datasets))
    out = tmp_path / "bc"
    train_policy("bc", None, world.expert, out=out, preset="tiny", steps=2, progress=False, device="cpu")
    standard = evaluate_policy(out, episodes=3, progress=False)
    assert standard["act"] == "greedy" and standard["protocol"] == Protocol().to_dict()
    assert standard["ref_max_score"] == 1.0                  # the dataset's references (this test data says 1)
    shifted = evaluate_policy(out, episodes=3, starts="shifted", action_noise=0.1, progress=False)
    assert shifted["ref_protocol"] == "shifted starts, action noise 0.1"
    assert shifted["ref_max_score"] > 1.0 and shifted["ref_max_score"] > shifted["ref_min_score"]
    expected = (shifted["return_mean"] - shifted["ref_min_score"]) / (shifted["ref_max_score"] - shifted["ref_min_score"])
    assert shifted["normalized_score"] == pytest.approx(expected)
    assert evaluate_policy(out, episodes=1, act="sample", progress=False)["deterministic"] is False


def test_the_action_convention_follows_the_algorithm():
    from wmil.algos.base import algorithm_class

    conventions = {name: algorithm_class(name).evaluation_act for name in ("ditto", "dgail", "dbc", "sqil", "bc",
                                                                             "vins", "gpril")}
    assert conventions == {"ditto": "sample", "dgail": "sample", "dbc": "sample", "sqil": "sample", "bc": "greedy",
                           "vins": "greedy", "gpril": "greedy"}


def test_compare_scores_runs_side_by_side_under_each_protocol(env_worlds, tmp_path, monkeypatch, capsys):
    from cli.main import main as wmil_main
    from wmil.train.policy import train_policy

    world = env_worlds(True)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(world.datasets))
    runs = []
    for steps in (1, 3):
        out = tmp_path / f"bc-{steps}"
        train_policy("bc", None, world.expert, out=out, preset="tiny", steps=steps, progress=False, device="cpu",
                     expert_episodes=1)
        runs.append(str(out))
    assert wmil_main(["compare", *runs, "--episodes", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "standard starts" in lines[0] and "shifted starts" in lines[0]
    assert all(any(line.startswith(run) and "bc, 1 demo" in line for line in lines) for run in runs)
    assert not any((tmp_path / f"bc-{s}" / "evaluation.json").exists() for s in (1, 3))   # the runs are left alone
