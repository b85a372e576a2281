"""The algorithm conformance suite: every registered algorithm × discrete/continuous actions ×
every world model it accepts, on tiny presets and real environments (CartPole, Pendulum).

Each case trains, logs the algorithm's declared metric keys with finite losses, checkpoints,
resumes bit for bit (every network, optimiser and random generator of the learner), loads
as a deployable policy and acts in the real environment. A new algorithm is covered by its
registry line."""

import math

import numpy as np
import pytest
import torch

from wmil.algos.base import ALGORITHMS, algorithm_class
from wmil.config import describe
from wmil.eval.evaluate import evaluate_policy
from wmil.runs import RunDir
from wmil.train.policy import load_policy, train_policy

RUN = {"log_every": "1", "eval_every": "2", "checkpoint_every": "2"}


def _cases():
    for algo in sorted(ALGORITHMS):
        models = algorithm_class(algo).world_models or (None,)
        for discrete in (True, False):
            for model in models:
                yield pytest.param(algo, discrete, model, id=f"{algo}-{'discrete' if discrete else 'continuous'}-{model}")


def _flat(state, prefix=""):
    """Every tensor and plain value of a (nested) training state, by path."""
    if isinstance(state, dict):
        for key, value in state.items():
            yield from _flat(value, f"{prefix}/{key}")
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _flat(value, f"{prefix}/{i}")
    else:
        yield prefix, state


def _assert_identical(a, b):
    flat_a, flat_b = dict(_flat(a)), dict(_flat(b))
    assert flat_a.keys() == flat_b.keys()
    for key, value in flat_a.items():
        other = flat_b[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key
        else:
            assert value == other or (isinstance(value, float) and math.isnan(value) and math.isnan(other)), key


@pytest.mark.parametrize("algo, discrete, model", list(_cases()))
def test_algorithm_trains_resumes_exactly_deploys_and_acts(env_worlds, tmp_path, monkeypatch, algo, discrete, model):
    world = env_worlds(discrete)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(world.datasets))  # evaluation re-reads the expert by name
    cls = algorithm_class(algo)
    wm = world.model(model) if model else None

    def train(out, steps):
        return train_policy(algo, wm, world.expert, out=tmp_path / out, preset="tiny", steps=steps, seed=5,
                            overrides=RUN, device="cpu", progress=False)

    train("full", 4)
    run = RunDir(tmp_path / "full", "policy")
    metrics = run.read_metrics()
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert set(cls.metric_keys) <= set(metrics[-1]), sorted(metrics[-1])
    assert all(math.isfinite(v) for m in metrics for k, v in m.items() if k.startswith("loss/"))
    assert [p.name for p in run.checkpoints()] == ["step_00000002.pt", "step_00000004.pt"]

    # Resume: stop at step 2, then continue to 4 — the same state, bit for bit, and one metric row a step.
    train("part", 2)
    train("part", 4)
    assert [m["step"] for m in RunDir(tmp_path / "part", "policy").read_metrics()] == [1, 2, 3, 4]
    full_state = RunDir(tmp_path / "full", "policy").load_checkpoint()["algo"]
    part_state = RunDir(tmp_path / "part", "policy").load_checkpoint()["algo"]
    _assert_identical(full_state, part_state)

    # The checkpoint deploys and acts in the real environment.
    policy = load_policy(tmp_path / "full")
    policy.reset()
    obs = np.zeros(policy.spec.obs_shape, np.float32)
    action = policy.act(obs)
    if discrete:
        assert isinstance(action, int) and 0 <= action < policy.spec.action_dim
    else:
        assert isinstance(action, np.ndarray) and action.shape == (policy.spec.action_dim,)
        assert action.dtype == np.float32 and np.all(np.abs(action) <= 2.0)
    report = evaluate_policy(tmp_path / "full", episodes=1, progress=False)
    assert report["env"] == world.env and len(report["returns"]) == 1 and math.isfinite(report["return_mean"])


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_algorithm_config_is_documented_and_validated(algo):
    """Every field has a docstring and a type; every preset builds; a bad value is one line."""
    from wmil.config import PRESETS, build_config
    from wmil.errors import UserError

    cls = algorithm_class(algo)
    for preset in PRESETS:
        config = build_config(cls.config_cls, preset)
        for name, _, accepted, doc in describe(config):
            assert doc and accepted, f"{algo}: field {name} lacks a docstring or a type"
    with pytest.raises(UserError, match="batch_size=0 must be at least 1"):
        build_config(cls.config_cls, "small", {"batch_size": "0"})


def _bf16_cases():
    for algo in sorted(ALGORITHMS):
        models = algorithm_class(algo).world_models or (None,)
        model = "rssm" if "rssm" in models else models[0]
        for discrete in (True, False):
            yield pytest.param(algo, discrete, model, id=f"{algo}-{'discrete' if discrete else 'continuous'}-{model}")


@pytest.mark.parametrize("algo, discrete, model", list(_bf16_cases()))
def test_algorithm_trains_under_bf16_autocast(env_worlds, tmp_path, monkeypatch, algo, discrete, model):
    """``precision='bf16'`` runs every algorithm's update under autocast (recorded in the run) with
    finite losses, and its checkpoint deploys and acts."""
    from wmil import precision

    world = env_worlds(discrete)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(world.datasets))
    lowered = []
    original = precision.autocast

    def spy(device, value):  # the trainer's context: record that the update ran under bf16
        lowered.append(value)
        return original(device, value)

    monkeypatch.setattr("wmil.train.policy.autocast", spy)
    train_policy(algo, world.model(model) if model else None, world.expert, out=tmp_path / "run", preset="tiny",
                 steps=2, seed=5, overrides=RUN, device="cpu", progress=False, precision="bf16")
    run = RunDir(tmp_path / "run", "policy")
    assert run.read_config()["train"]["precision"] == "bf16"
    assert lowered == ["bf16", "bf16"], "each update runs under the run's precision"
    metrics = run.read_metrics()
    losses = {k: v for m in metrics for k, v in m.items() if k.startswith("loss/")}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    policy = load_policy(tmp_path / "run")
    policy.reset()
    policy.act(np.zeros(policy.spec.obs_shape, np.float32))
