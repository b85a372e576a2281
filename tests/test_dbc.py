"""D-BC: its loss against hand-computed values and a learning check that can fail."""

import pytest
import torch
from helpers import WM_TINY, function_expert

from wmil.algos.dbc import DBC, DBCConfig, bc_loss


def test_bc_loss_by_hand():
    loss, terms = bc_loss(torch.tensor([-1.0, -3.0]), torch.tensor([0.5, 1.5]), 0.1)
    assert float(terms["nll"]) == pytest.approx(2.0) and float(terms["entropy"]) == pytest.approx(1.0)
    assert float(loss) == pytest.approx(2.0 - 0.1)


def test_dbc_defaults_are_the_ditto_codes():
    """D-BC departs from the shared actor block where the DITTO code does: entropy 0.1, lr 3e-4,
    and it reads the mean features (see its docstring)."""
    config = DBCConfig.preset("small")
    assert (config.entropy_discrete, config.entropy_continuous, config.actor_lr, config.features) == \
        (0.1, 0.1, 3e-4, "mean")


@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
def test_dbc_clones_a_function_of_the_observation(tmp_path, monkeypatch, discrete):
    """On a model whose features carry the observation (the VINS dynamics model: features are
    the normalised observation), D-BC recovers a = f(obs) from 300 expert steps."""
    from wmil.train.world_model import train_world_model

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    dataset = function_expert("dgtest/clone-v0", discrete, [30] * 10, seed=3)
    world_model = train_world_model(dataset, model="dynamics", preset="tiny", out=tmp_path / "wm", steps=1,
                                    overrides={**WM_TINY, "batch_size": "2", "seq_len": "6",
                                               "open_loop_context": "2"}, progress=False, device="cpu")
    for parameter in world_model.parameters():
        parameter.requires_grad_(False)
    torch.manual_seed(0)
    learner = DBC(world_model, dataset, DBCConfig.preset("tiny"), torch.device("cpu"))
    before = learner.evaluate()
    for step in range(1, 301):
        learner.update(step)
    after = learner.evaluate()
    if discrete:
        assert after["eval/action_accuracy"] > 0.9, (before, after)
    else:
        variance = float(learner.expert.action[learner.expert.action_mask].var())
        assert after["eval/action_mse"] < 0.2 * variance, (before, after, variance)
