"""``wmil export``: a trained policy as a self-contained ``torch.export`` program (``.pt2``).

The file holds the whole filtering policy (encoder, recurrent posterior filter, actor) as one
exported graph with its weights; ``torch.export.load(path).module()`` runs it with nothing but
torch installed. The recurrent state goes in and out explicitly, so the caller owns it:

    program = torch.export.load("policy.pt2").module()       # call it under torch.no_grad()
    deter, stoch, prev = (torch.zeros(1, n) for n in (D, S, A))     # sizes in policy.json
    first = torch.ones(1, dtype=torch.bool)
    for each step:
        action, prev, out, deter, stoch = program(obs[None], deter, stoch, prev, first, noise)
        first = torch.zeros(1, dtype=torch.bool)

Inputs: ``obs (N, *O)`` as the model reads it (float32 vectors, uint8 channels-first images),
``deter (N, D)``, ``stoch (N, S)``, ``prev_action (N, A)`` (the model-format action returned by
the previous call; zeros at an episode's start), ``is_first (N,)`` bool, and ``noise (N, S)``:
the latent sample's noise (Gumbel(0, 1) for ``rssm``'s categorical latents, standard normal for
``gaussian_rssm``; zeros give the most likely latent). Outputs: ``action`` in the
environment's format (int64 index ``(N,)`` or float32 ``(N, A)`` inside the bounds) — the
actor's most likely action —, the same action in the model's format (feed it back as
``prev_action``), the actor's raw output (categorical logits, or the Gaussian head's
pre-squash mean and raw std, to sample from), and the new ``deter``/``stoch``. A model-free
policy (BC on observations) takes ``obs`` alone and returns ``(action, raw output)``.

``policy.json`` beside the file records the sizes, dtypes and the input/output names. VINS is
not exportable (its shooting step draws random candidates inside the policy). ONNX is not
offered: torch's ONNX exporter needs the ``onnxscript`` package, which wmil does not depend on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from wmil.errors import UserError
from wmil.runs import write_text_atomic
from wmil.types import State


class _LatentProgram(nn.Module):
    """One filtering step of a :class:`~wmil.policy.LatentPolicy`, state in and out."""

    def __init__(self, policy):
        super().__init__()
        self.world_model, self.actor, self.features = policy.world_model, policy.actor, policy.features
        self.discrete = policy.spec.discrete

    def forward(self, obs, deter, stoch, prev_action, is_first, noise):
        model = self.world_model
        model._noise = lambda shape: noise.unsqueeze(0)  # the caller's noise, (T=1, N, S)
        try:
            state = model.obs_step(State(deter, stoch), prev_action, obs, is_first)
        finally:
            del model._noise
        action, raw = _greedy(self.actor, model.features(state, self.features))
        env_action = action.argmax(-1) if self.discrete else action
        return env_action, action, raw, state.deter, state.stoch


class _ObservationProgram(nn.Module):
    def __init__(self, policy):
        super().__init__()
        self.net, self.discrete = policy.net, policy.spec.discrete

    def forward(self, obs):
        action, raw = _greedy(self.net.head, self.net.embed(obs))
        return (action.argmax(-1) if self.discrete else action), raw


def _greedy(head, features):
    """(most likely action in the model's format, the head's raw output): one pass of its net."""
    raw = head.net(features)
    action, _, _ = head.from_output(raw, deterministic=True)
    return action, raw


def export_policy(policy, path: str | os.PathLike, batch: int = 1) -> Path:
    """Write ``policy`` (a loaded deployable policy) as a ``.pt2`` program and ``.json`` sidecar
    beside it (both written to temporary names, then renamed); returns the program's path."""
    from wmil.algos.supervised import ObservationPolicy
    from wmil.policy import LatentPolicy

    path = Path(path)
    if path.suffix != ".pt2":
        raise UserError(f"{path}: an exported policy is a .pt2 file (torch.export); choose a name ending in .pt2")
    if not path.parent.is_dir():
        raise UserError(f"{path.parent}: no such directory; create it first")
    spec = policy.spec
    obs_dtype = torch.uint8 if spec.pixels else torch.float32
    obs = torch.zeros(batch, *spec.obs_shape, dtype=obs_dtype)
    if isinstance(policy, LatentPolicy):
        model = policy.world_model
        initial = model.initial(batch)
        deter, stoch = initial.deter, initial.stoch
        args = (obs, deter, stoch, torch.zeros(batch, spec.action_dim), torch.ones(batch, dtype=torch.bool),
                torch.zeros_like(stoch))
        program = _LatentProgram(policy).eval()
        inputs = {"obs": [list(spec.obs_shape), str(obs_dtype)], "deter": [deter.shape[-1], "float32"],
                  "stoch": [stoch.shape[-1], "float32"], "prev_action": [spec.action_dim, "float32"],
                  "is_first": [None, "bool"], "noise": [stoch.shape[-1], "float32"]}
        outputs = ["action", "action_model", "actor_raw", "deter", "stoch"]
    elif isinstance(policy, ObservationPolicy):
        args = (obs,)
        program = _ObservationProgram(policy).eval()
        inputs = {"obs": [list(spec.obs_shape), str(obs_dtype)]}
        outputs = ["action", "actor_raw"]
    else:
        raise UserError(f"{type(policy).__name__} cannot be exported: its action step is not one fixed graph "
                        "(VINS draws its shooting candidates inside the policy); export a DITTO, D-GAIL, D-BC, "
                        "SQIL, GPRIL or BC policy")
    with torch.no_grad():
        exported = torch.export.export(program, args, strict=False)
    meta = {"format": "wmil-policy-pt2", "version": 1, "algo": policy.run_config.get("algo"),
            "discrete": spec.discrete, "action_dim": spec.action_dim, "inputs": inputs, "outputs": outputs,
            "batch": batch, "noise": _noise_kind(policy),
            "action_low": list(spec.action_low) if spec.action_low else None,
            "action_high": list(spec.action_high) if spec.action_high else None}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.export.save(exported, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    write_text_atomic(path.with_suffix(".json"), json.dumps(meta, indent=2))
    return path


def _noise_kind(policy) -> Optional[str]:
    model = getattr(policy, "world_model", None)
    if model is None or model.initial(1).stoch.shape[-1] == 0:
        return None
    from wmil.world_models.gaussian_rssm import GaussianRSSM

    return "normal" if isinstance(model, GaussianRSSM) else "gumbel"


__all__ = ["export_policy"]
