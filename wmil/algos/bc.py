"""Behaviour cloning (Pomerleau 1989; Bain & Sammut 1999), the supervised baseline.

The real algorithm of its paper, adapted to the offline setting: a policy π(a | o) is fitted
to the expert's (observation, action) pairs by maximum likelihood, with no environment and no
world model:

    discrete:    L = −log softmax(f(o))[a_E]                      (cross-entropy)
    continuous:  L = Σ_d ½((a_E,d − μ_d(o)) / σ_d(o))² + log σ_d(o) (Gaussian likelihood)
                 or L = ‖a_E − μ(o)‖² / A                          (MSE, the VINS paper's BC)

The network is an MLP on vector observations (standardised by the demo mean and std; VINS
paper: 3 hidden layers of 256 ReLU units) or :class:`wmil.nets.ConvEncoder` + an MLP head on
pixels. A fraction of the demo *episodes* is held out: the validation score is measured every
evaluation and the parameters with the best one are kept (early stopping by model selection;
``patience`` also stops the updates). The deployed policy acts on raw environment
observations with the mean (or most likely) action. The network, its losses and the trainer
live in :mod:`wmil.algos.supervised`, which VINS's π_BC shares.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch
from torch import nn

from wmil.algos.base import Learner
from wmil.algos.supervised import (BCConfig, BCNet, BCTrainer, Demos, ObservationPolicy, demo_pairs, patience_refusal,
                                   split_demos)
from wmil.data.dataset import Dataset
from wmil.types import DataSpec


class BC(Learner):
    """Behaviour cloning on observations; trains without a world model."""

    name = "bc"
    config_cls = BCConfig
    progress_keys = ("loss/bc", "eval/val_loss")
    metric_keys = ("loss/bc",)
    world_models: ClassVar = None
    data_parallel = True  # minibatch rows are a sharded global draw (BCTrainer.update)

    def __init__(self, world_model, expert: Dataset, config: BCConfig, device: torch.device):
        super().__init__(None, expert, config, device)
        train, val = split_demos(expert, config)
        net = BCNet(self.spec.obs_shape, self.spec, config)
        self.bc = self.add_component("bc", BCTrainer(net, demo_pairs(train),
                                                     demo_pairs(val) if len(val) else Demos.empty(self.spec),
                                                     config, self.spec, device))
        self.seed_rng()

    def batch_counts(self) -> dict[str, int]:
        return {"batch_size": self.config.batch_size}

    @classmethod
    def parallel_refusal(cls, config: BCConfig) -> Optional[str]:
        return patience_refusal(config)

    def update(self, step: int) -> dict:
        return self.bc.update(self.rng, self.shard)

    def evaluate(self) -> dict:
        return self.bc.evaluate(self.steps_done)

    @classmethod
    def policy_networks(cls, world_model, spec: DataSpec, config: BCConfig) -> dict[str, nn.Module]:
        return {"policy": BCNet(spec.obs_shape, spec, config)}

    @classmethod
    def make_policy(cls, world_model, networks: dict[str, nn.Module], spec: DataSpec,
                    config: BCConfig) -> ObservationPolicy:
        return ObservationPolicy(networks["policy"], spec)
