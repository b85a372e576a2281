"""Offline metrics of a deployed policy on the expert episodes it was trained from (no
environment): the DITTO paper's latent distance and expert action prediction for policies on
world-model latents, action agreement for BC and VINS. ``wmil evaluate`` reports them beside
the real-environment scores."""

from __future__ import annotations

import torch

from wmil.data.dataset import Dataset, load
from wmil.imagination.expert import ExpertLatents
from wmil.imagination.metrics import action_agreement, eval_rows, latent_distance
from wmil.policy import DeployedPolicy, LatentPolicy


def expert_view(run_config: dict) -> Dataset:
    """The expert episodes a policy run was trained from (same dataset, same episodes)."""
    dataset = load(run_config["expert"])
    ids = run_config.get("expert_episode_ids")
    return dataset if ids is None else Dataset(dataset.data_dir, ids)


@torch.no_grad()
def offline_metrics(policy: DeployedPolicy, starts: int = 256) -> dict[str, float]:
    """The offline metrics that apply to ``policy`` (which carries its ``run_config``)."""
    from wmil.algos.supervised import ObservationPolicy, agreement, demo_pairs
    from wmil.algos.vins import VINSPolicy, shooting_agreement

    expert = expert_view(policy.run_config)
    if isinstance(policy, LatentPolicy):
        latents = ExpertLatents.encode(policy.world_model, expert, policy.device, features=policy.features)
        out = action_agreement(policy.actor, latents, policy.spec)
        algo_config = policy.run_config.get("algo_config", {})
        horizon = algo_config.get("horizon")
        # On what the reward compares (DITTO's and D-GAIL's reward_features), as training logs it.
        compare = algo_config.get("reward_features") or policy.features
        if horizon is not None:
            try:
                rows = eval_rows(latents, int(horizon), starts)
            except Exception:  # every expert episode is shorter than the horizon: no latent distance
                rows = None
            if rows is not None:
                out["eval/latent_distance"] = latent_distance(policy.world_model, policy.actor, latents, rows,
                                                              int(horizon), features=policy.features, compare=compare)
        return out
    if isinstance(policy, ObservationPolicy):
        stats = agreement(policy.net, demo_pairs(expert).to(policy.device), policy.spec.discrete)
        key = "action_accuracy" if policy.spec.discrete else "action_mse"
        return {f"eval/{key}": stats[key]}
    if isinstance(policy, VINSPolicy):
        latents = ExpertLatents.encode(policy.world_model, expert, policy.device)
        inputs = policy.inputs.demo_inputs(expert, latents)
        return shooting_agreement(policy.world_model, policy.bc, policy.value, latents, inputs, policy.spec,
                                  policy.config, policy.inputs)
    return {}
