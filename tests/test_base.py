"""The learner base (wmil.algos.base): the features option from training to deployment, the
behaviour-cloning term, model selection, and the one way a policy is built."""

import numpy as np
import pytest
import torch
from helpers import IIDModel, function_expert

from wmil.algos.base import Selection
from wmil.algos.dgail import DGail, DGailConfig
from wmil.algos.ditto import Ditto, DittoConfig
from wmil.errors import UserError
from wmil.eval.offline import offline_metrics
from wmil.train.policy import load_policy, train_policy
from wmil.world_models.base import feature_size

RUN = {"log_every": "1", "eval_every": "3", "checkpoint_every": "2"}


@pytest.mark.parametrize("mode", ["mean", "deter"])
@pytest.mark.parametrize("algo", ["ditto", "dgail", "dbc", "sqil", "gpril"])
def test_features_modes_train_and_deploy(synthetic_worlds, tmp_path, monkeypatch, algo, mode):
    """The ``features`` option reaches the actor's input at training and at deployment."""
    wm_dir, dataset, world_model = synthetic_worlds("rssm", True)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(dataset.data_dir.parents[2]))  # offline_metrics reloads it
    out = tmp_path / "policy"
    train_policy(algo, wm_dir, dataset, out=out, preset="tiny", steps=2, device="cpu",
                 overrides={**RUN, "features": mode}, progress=False)
    width = feature_size(world_model, mode)
    assert width == (world_model.config.deter if mode == "deter" else world_model.feature_dim)
    policy = load_policy(out)
    assert policy.features == mode
    assert next(policy.actor.parameters()).shape[-1] == width  # the first layer reads `width` features
    policy.reset()
    for obs in np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32):
        assert policy.act(obs) in (0, 1)
    assert 0.0 <= offline_metrics(policy, starts=8)["eval/latent_distance"] <= 2.0
    with pytest.raises(UserError, match="features"):
        train_policy(algo, wm_dir, dataset, out=tmp_path / "bad", preset="tiny", steps=1, device="cpu",
                     overrides={"features": "probs"}, progress=False)


@pytest.mark.parametrize("algo", ["ditto", "dgail"])
def test_bc_weight_adds_behaviour_cloning_to_the_actor(tmp_path, monkeypatch, algo):
    """On the i.i.d. data (a = [obs[0] > 0]) with the ideal model, the imagined reward carries no
    information about the action, so only the BC term can teach it: accuracy ≈ 0.5 without it,
    > 0.9 with ``bc_weight=1`` after 300 updates."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    dataset = function_expert("dgtest/iid-v0", True, [30] * 10, seed=3)
    accuracy = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        if algo == "ditto":
            config = DittoConfig.preset("tiny", {"features": "deter", "actor_lr": 1e-3, "bc_weight": weight,
                                                 "bc_batch_size": 64, "starts": "expert"})  # the model has no data
            learner = Ditto(IIDModel(dataset.spec), dataset, config, torch.device("cpu"))
        else:
            config = DGailConfig.preset("tiny", {"pair": "zz", "actor_lr": 1e-3, "bc_weight": weight,
                                                 "bc_batch_size": 64})
            learner = DGail(IIDModel(dataset.spec), dataset, config, torch.device("cpu"))
        for step in range(1, 301):
            metrics = learner.update(step)
        assert ("loss/bc_nll" in metrics) is (weight > 0)
        accuracy[weight] = learner.evaluate()["eval/action_accuracy"]
    assert accuracy[1.0] > 0.9 and accuracy[0.0] < 0.75, accuracy


def test_selection_keeps_the_best_parameters():
    net = torch.nn.Linear(2, 1)
    selection = Selection({"net": net}, patience=2)
    assert selection.offer(1.0, step=1) and selection.best_step == 1
    kept = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    assert not selection.offer(2.0, step=2) and not selection.stopped
    assert not selection.offer(1.5, step=3) and selection.stopped          # two evaluations without progress
    for name, value in selection.snapshot["net"].items():
        assert torch.equal(value, kept[name])
    assert selection.offer(5.0, step=4, force=True) and selection.best_step == 4   # forced (no held-out data)
    higher = Selection({"net": net}, higher_is_better=True)
    assert higher.offer(0.2, 1) and higher.offer(0.3, 2) and not higher.offer(0.1, 3)
    restored = Selection({"net": net})
    restored.load_state_dict(higher.state_dict())
    assert (restored.best_score, restored.best_step) == (0.3, 2)


def test_a_learners_policy_is_its_checkpoints_policy(synthetic_worlds, tmp_path, monkeypatch):
    """``policy()`` of a live learner and ``load_policy`` of its checkpoint are built the same
    way and act the same (the one path through ``deployable``)."""
    wm_dir, dataset, _ = synthetic_worlds("rssm", True)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(dataset.data_dir.parents[2]))  # DITTO's world starts read it
    out = tmp_path / "ditto"
    live = train_policy("ditto", wm_dir, dataset, out=out, preset="tiny", steps=2, device="cpu", overrides=RUN,
                        progress=False)
    loaded = load_policy(out)
    assert type(live) is type(loaded)
    for (name, a), (_, b) in zip(live.actor.state_dict().items(), loaded.actor.state_dict().items()):
        assert torch.equal(a, b), name
    live.reset(), loaded.reset()
    for k, obs in enumerate(np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)):
        # The posterior filter samples z: the same noise for both, so only the networks can differ.
        torch.manual_seed(k)
        action = live.act(obs)
        torch.manual_seed(k)
        assert action == loaded.act(obs)


@pytest.mark.parametrize("algo", ["dgail", "sqil", "gpril"])
def test_learners_may_start_imagination_from_world_data(env_worlds, tmp_path, monkeypatch, algo):
    """``starts='world'``/``'mixed'`` draws imagination start states from the world model's own
    datasets (encoded once), which the demos never show."""
    from wmil.algos.base import algorithm_class
    from wmil.train.world_model import load_world_model

    world = env_worlds(True)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(world.datasets))
    model = load_world_model(world.model("rssm"))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    cls = algorithm_class(algo)
    for mode in ("world", "mixed"):
        torch.manual_seed(0)
        learner = cls(model, world.expert, cls.config_cls.preset("tiny", {"starts": mode}), torch.device("cpu"))
        starts = learner.start_states(8, learner.expert.starts(0))
        world_deter, expert_deter = learner.world.states.deter, learner.expert.states.deter
        from_world = [bool((world_deter == row).all(-1).any()) for row in starts.deter]
        from_expert = [bool((expert_deter == row).all(-1).any()) for row in starts.deter]
        assert all(w or e for w, e in zip(from_world, from_expert))
        assert sum(from_world) >= (8 if mode == "world" else 4)
        assert len(learner.world.n_obs) == len(world.world)  # every world episode (≤ world_episodes)
        metrics = learner.update(1)
        assert all(np.isfinite(v) for k, v in metrics.items() if k.startswith("loss/"))


def test_world_starts_name_the_missing_world_dataset_and_the_way_out(env_worlds, tmp_path, monkeypatch):
    """World-data starts on a world model whose training dataset is not on disk (a shared
    checkpoint without its data): a one-line error naming the dataset and ``starts=expert``."""
    from wmil.train.world_model import load_world_model

    world = env_worlds(True)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(world.datasets))
    model = load_world_model(world.model("rssm"))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "elsewhere"))
    learner = Ditto(model, world.expert, DittoConfig.preset("tiny", {"starts": "world"}), torch.device("cpu"))
    with pytest.raises(UserError, match="not found.*starts=expert") as error:
        learner.sample_starts()
    assert "\n" not in str(error.value)
    assert str(model.run_config["datasets"][0]) in str(error.value)
