"""DreamerV2's recurrent state-space model (Hafner et al. 2021), the world model of DITTO.

State: a deterministic GRU state ``h`` (LayerNorm GRU) and a stochastic state ``z`` of
``stoch`` categoricals with ``classes`` classes each, sampled with straight-through gradients.

    h_t      = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])         recurrent state
    p(z_t | h_t)                                       prior   (predicts without obs_t)
    q(z_t | h_t, e_t),  e_t = enc(obs_t)               posterior
    p(obs_t | h_t, z_t)                                decoder (unit Gaussian: ½‖ô − o‖²; or
                                                       Bernoulli per cell, obs_likelihood)

Vector observations are standardised per coordinate (``normalize_obs``, statistics of the
training data fixed by the trainer through :meth:`RSSM.set_normalizer`, as the ``dynamics``
model does) before the encoder and in the reconstruction loss; ``decode`` maps predictions
back to raw units. Without it a coordinate with a small range is nearly free to get wrong:
on CartPole the expert's pole angle has std 0.004 rad, the unnormalised model predicted it
worse than repeating the last observation, and no learner on its latents imitated the expert.

Loss (DITTO appendix B, eq. 11-12): ``obs_scale·(−log p(o|h,z)) + kl_scale·KL_bal`` with
KL balancing ``α·KL(sg(q) ‖ p) + (1 − α)·KL(q ‖ sg(p))``, α = ``kl_balance`` = 0.8, and
``kl_scale`` 0.1 as in the DITTO authors' code. Reward and continue heads are optional.

Only what depends on the previous step runs inside the sequential loop (the input layer,
the GRU, the posterior head and the sample); the encoder, the action and embedding halves of
the input/posterior layers, the priors, the decoder and every loss run batched over all
B×T steps. The weight gradients of the four in-loop linear maps are summed once per sequence
after the loop (:mod:`wmil.nets.step_linear`). Under bf16 autocast (``train-model --precision
bf16``) the products run in bf16 and everything the loss or the recurrence accumulates stays
float32: h, the GRU's LayerNorm and gates, the latent logits and samples, the KL, the
predictions and the loss terms. :class:`wmil.world_models.gaussian_rssm.GaussianRSSM` reuses
this skeleton with a diagonal Gaussian ``z``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from wmil.config import (Activation, NonNegFloat, NonNegInt, OptimizerConfig, PosFloat, PosInt, Prob,
                         Range)
from wmil.nets import MLP, LayerNormGRUCell, preprocess_pixels
from wmil.nets import onehot
from wmil.nets.grid import image_decoder, image_encoder
from wmil.nets.onehot import OneHot
from wmil.nets.reuse import derived
from wmil.nets.step_linear import StepTape
from wmil.precision import float32, lowered_dtype
from wmil.types import DataSpec, SequenceBatch
from wmil.types import State
from wmil.world_models.base import WorldModelBase, check_features
from wmil.world_models.likelihood import observation_nll, predict, resolve_likelihood
from wmil.world_models.latent import (categorical_entropy, categorical_kl, gumbel_noise,
                                      kl_balance, masked_mean, straight_through_sample, unimix_draw,
                                      unimix_logits)

Tensor = torch.Tensor

_FUNCTIONAL_ACT = {"elu": F.elu, "relu": F.relu, "silu": F.silu, "tanh": torch.tanh}


@dataclass(frozen=True)
class RecurrentConfig(OptimizerConfig):
    """Fields shared by the recurrent world models (``rssm``, ``gaussian_rssm``)."""

    deter: PosInt = 200
    """Size of the deterministic GRU state h."""
    hidden: PosInt = 200
    """Width of the layers around the GRU (input layer, prior and posterior heads)."""
    stoch: PosInt = 32
    """Size of the stochastic state z: categorical variables (rssm) or Gaussian dimensions (gaussian_rssm)."""
    mlp_layers: NonNegInt = 2
    """Hidden layers of the vector encoder/decoder MLPs and of the reward/continue heads."""
    mlp_units: PosInt = 200
    """Units per hidden layer of those MLPs."""
    cnn_depth: PosInt = 16
    """Channel multiplier of the pixel encoder/decoder (DreamerV2 uses 48); small grids (MinAtar) get the grid nets of wmil.nets.grid."""
    obs_likelihood: Literal["gaussian", "bernoulli"] = "gaussian"
    """p(o | h, z): unit Gaussian, or Bernoulli per cell for binary images (measured worse on MinAtar: wmil/world_models/likelihood.py)."""
    act: Activation = "elu"
    """Activation everywhere: 'elu' (DreamerV2), 'relu', 'silu' or 'tanh'."""
    norm: bool = False
    """LayerNorm after each hidden layer of the encoder/decoder MLPs."""
    normalize_obs: bool = True
    """Standardise vector observations per coordinate (training-data mean/std) for the encoder and the reconstruction loss."""
    std_floor: PosFloat = 1e-3
    """Lower bound of the per-coordinate std used to standardise (constant coordinates)."""
    kl_scale: NonNegFloat = 0.1
    """Weight of the KL term (DITTO code: 0.1)."""
    kl_balance: Optional[Prob] = 0.8
    """α of KL balancing (weight of the prior side); None for the plain KL(q ‖ p)."""
    free_nats: NonNegFloat = 0.0
    """The batch-mean KL is clamped below at this many nats (0 disables)."""
    obs_scale: NonNegFloat = 1.0
    """Weight of the observation reconstruction term."""
    reward_head: bool = False
    """Also predict the logged reward from the features (off for imitation)."""
    reward_scale: NonNegFloat = 1.0
    """Weight of the reward term (when reward_head)."""
    continue_head: bool = False
    """Also predict 1 - is_terminal from the features (off by default, as the DITTO authors' world models; DreamerV2 has one). Imagination learners then discount an imagined rollout by the predicted continuation (``continue_discount``)."""
    continue_input: Literal["features", "deter"] = "features"
    """What the continue head reads: 'features' [h, z] (DreamerV2), or 'deter' h alone, so that it must predict an episode's end from the dynamics rather than from the last frame's own latent (in imagination z comes from the prior, which may not show a rare ending: MinAtar Breakout, README Benchmarks)."""
    continue_scale: NonNegFloat = 1.0
    """Weight of the continue term (when continue_head)."""


@dataclass(frozen=True)
class RSSMConfig(RecurrentConfig):
    """DreamerV2 RSSM with categorical latents (see the module docstring for the loss)."""

    classes: Annotated[int, Range(ge=2)] = 32
    """Classes per categorical latent variable."""
    unimix: Prob = 0.0
    """Fraction of the uniform distribution mixed into every categorical (DreamerV3: 0.01)."""

    PRESETS: ClassVar = {
        "tiny": dict(deter=32, hidden=32, stoch=4, classes=4, mlp_layers=1, mlp_units=32, cnn_depth=4),
        "small": dict(),
        # DreamerV2 / DITTO sizes.
        "paper": dict(deter=1024, hidden=1000, stoch=32, classes=32, mlp_layers=4, mlp_units=400, cnn_depth=48),
    }


class RSSM(WorldModelBase):
    """DreamerV2 RSSM; subclasses change the stochastic latent through the ``_latent`` hooks
    (``_noise``, ``_sample``, ``_draw``, ``_params_from_raw``, ``_state``, ``_params``, ``_stoch_mean``,
    ``_kl``, ``_entropy``)."""

    config_cls = RSSMConfig

    config: RecurrentConfig

    def __init__(self, spec: DataSpec, config: RecurrentConfig):
        super().__init__()
        self.spec = spec
        self.config = config
        self._act = _FUNCTIONAL_ACT[config.act]
        stoch, raw = self._stoch_size(), self._raw_size()
        D, H, A = config.deter, config.hidden, spec.action_dim

        self.likelihood = resolve_likelihood(config.obs_likelihood, spec)
        if spec.pixels:  # 64×64 conv nets, or grid nets for small grids (chosen by the shape)
            self.encoder: nn.Module = image_encoder(spec.obs_shape, config.cnn_depth, config.act)
        else:
            self.encoder = MLP(spec.obs_shape[0], None, config.mlp_layers, config.mlp_units,
                               config.act, config.norm)
        embed = self.encoder.out_dim

        # Linear layers on concatenated inputs are kept as one linear per input, so the
        # halves that do not depend on the previous step run batched before the loop.
        self.img_in_stoch = nn.Linear(stoch, H, bias=False)
        self.img_in_action = nn.Linear(A, H)
        self.cell = LayerNormGRUCell(H, D)
        self.prior_hidden = nn.Linear(D, H)
        self.prior_out = nn.Linear(H, raw)
        self.post_deter = nn.Linear(D, H, bias=False)
        self.post_embed = nn.Linear(embed, H)
        self.post_out = nn.Linear(H, raw)

        # Identity until the trainer calls set_normalizer; checkpoints from before the option
        # have no statistics and load as the identity (see _load_from_state_dict).
        obs_dim = 0 if spec.pixels else spec.obs_shape[0]
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))

        self.feature_dim = D + stoch
        if spec.pixels:
            self.decoder: nn.Module = image_decoder(self.feature_dim, spec.obs_shape,
                                                    config.cnn_depth, config.act)
        else:
            self.decoder = MLP(self.feature_dim, spec.obs_shape[0], config.mlp_layers,
                               config.mlp_units, config.act, config.norm)
        self.reward = (MLP(self.feature_dim, 1, config.mlp_layers, config.mlp_units, config.act,
                           config.norm) if config.reward_head else None)
        self.cont = (MLP(D if config.continue_input == "deter" else self.feature_dim, 1, config.mlp_layers,
                         config.mlp_units, config.act, config.norm) if config.continue_head else None)

    # ------------------------------------------------------------------ latent hooks
    def _stoch_size(self) -> int:
        return self.config.stoch * self.config.classes  # type: ignore[attr-defined]

    def _raw_size(self) -> int:
        return self._stoch_size()

    def _noise(self, batch_shape: tuple[int, ...]) -> Tensor:
        """Noise for ``_sample``: Gumbel ``(*batch_shape, S)``."""
        return gumbel_noise((*batch_shape, self._stoch_size()), device=self._device())

    def _sample(self, raw: Tensor, noise: Tensor) -> Tensor:
        """A differentiable sample of z from the head output ``raw``: ``(..., S)``."""
        logits = unimix_logits(raw, self.config.classes, self.config.unimix)  # type: ignore[attr-defined]
        return straight_through_sample(logits, self.config.classes, noise)  # type: ignore[attr-defined]

    def _draw(self, raw: Tensor) -> tuple[Tensor, Optional[Tensor], Tensor]:
        """A fresh differentiable sample of z from ``raw`` where no noise is passed in
        (imagination), the columns of its ones (``State.index``) and the distribution's
        parameters (``_params_from_raw(raw)``, computed once with the sample): the categoricals
        sampled by inverting their CDF, one uniform each, the distribution of ``_sample``'s
        Gumbel-max at 1/``classes`` of its random numbers."""
        return unimix_draw(raw, self.config.classes, self.config.unimix)  # type: ignore[attr-defined]

    def _onehot(self, state: State) -> Optional[OneHot]:
        """``state.stoch`` as a one-hot block for :func:`wmil.nets.onehot.linear`, or None: its
        recorded columns, or those read back from an exact one-hot (an imagination start)."""
        if not onehot.usable(state.stoch):
            return None
        index = state.index if state.index is not None else onehot.columns(state.stoch, self.config.classes)  # type: ignore[attr-defined]
        return None if index is None else OneHot(index, state.stoch.shape[-1])

    def _params_from_raw(self, raw: Tensor) -> Tensor:
        """Head output -> the distribution parameters the KL consumes (flat logits)."""
        return unimix_logits(raw, self.config.classes, self.config.unimix)  # type: ignore[attr-defined]

    def _state(self, deter: Tensor, stoch: Tensor, params: Tensor, index: Optional[Tensor] = None) -> State:
        return State(deter=deter, stoch=stoch, logits=params, index=index)

    def _params(self, state: State) -> Tensor:
        assert state.logits is not None
        return state.logits

    def _stoch_mean(self, params: Tensor) -> Tensor:
        """E[z] under the distribution ``params``: the class probabilities ``(..., S)``."""
        classes = self.config.classes  # type: ignore[attr-defined]
        probs = torch.softmax(params.unflatten(-1, (-1, classes)), -1)
        return probs.flatten(-2)

    def _kl(self, q: Tensor, p: Tensor) -> Tensor:
        return categorical_kl(q, p, self.config.classes)  # type: ignore[attr-defined]

    def _entropy(self, params: Tensor) -> Tensor:
        return categorical_entropy(params, self.config.classes)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ normalisation
    def set_normalizer(self, obs_mean, obs_std) -> None:
        """Fix the per-coordinate statistics ``(D,)`` of vector observations (the trainer passes
        those of the training data); a no-op for pixels or with ``normalize_obs`` off."""
        if self.spec.pixels or not self.config.normalize_obs:
            return
        mean = torch.as_tensor(obs_mean, dtype=torch.float32).reshape(self.obs_mean.shape)
        std = torch.as_tensor(obs_std, dtype=torch.float32).reshape(self.obs_std.shape)
        self.obs_mean.copy_(mean)
        self.obs_std.copy_(std.clamp(min=self.config.std_floor))

    @torch.no_grad()
    def set_pixel_rates(self, on_share) -> None:
        """Start a Bernoulli decoder at the data's base rate: its output bias becomes the log-odds
        of ``on_share (C,)``, the share of 'on' pixels in each channel of the training data (the
        trainer passes it on a fresh start). A no-op for vectors and for the Gaussian likelihood.
        Why (:mod:`wmil.world_models.likelihood`): from logits of 0 the first updates push every
        cell towards its base rate, and on MinAtar Asterix the categorical latents saturated and
        the posterior stopped reading the frame (KL 0.06 by update 200) while they did so."""
        if not self.spec.pixels or self.likelihood != "bernoulli":
            return
        logits = torch.logit(torch.as_tensor(on_share, dtype=torch.float32), eps=1e-3)  # shares clamped to [ε, 1 − ε]
        self.decoder.output_bias.copy_(logits.to(self.decoder.output_bias.device))

    def _normalize(self, obs: Tensor) -> Tensor:
        """``preprocess_obs`` output -> the encoder's input and the decoder's target."""
        return obs if self.spec.pixels else (obs - self.obs_mean) / self.obs_std

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name in ("obs_mean", "obs_std"):
            state_dict.setdefault(prefix + name, getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ------------------------------------------------------------------ protocol
    def _device(self) -> torch.device:
        return self.img_in_action.weight.device

    @property
    def loss_scales(self) -> dict[str, float]:
        c = self.config
        scales = {"obs": c.obs_scale, "kl": c.kl_scale}
        if c.reward_head:
            scales["reward"] = c.reward_scale
        if c.continue_head:
            scales["cont"] = c.continue_scale
        return scales

    def initial(self, batch_size: int) -> State:
        device = self._device()
        deter = torch.zeros(batch_size, self.config.deter, device=device)
        stoch = torch.zeros(batch_size, self._stoch_size(), device=device)
        params = self._params_from_raw(torch.zeros(batch_size, self._raw_size(), device=device))
        return self._state(deter, stoch, params)

    def preprocess_obs(self, obs: Tensor) -> Tensor:
        return preprocess_pixels(obs) if self.spec.pixels else obs.to(torch.float32)

    def features(self, state: State, mode: str = "sample") -> Tensor:
        if check_features(mode) == "deter":
            return state.deter  # (..., D)
        stoch = state.stoch if mode == "sample" else self._stoch_mean(self._params(state))
        return torch.cat([state.deter, stoch], -1)  # (..., D + S)

    def feature_onehot(self, state: State, mode: str = "sample") -> Optional[OneHot]:
        """Where ``features(state, mode)`` end in one-hot samples, their columns (the last
        ``S`` of the features), for the actor's and critic's first layers; else None."""
        return self._onehot(state) if mode == "sample" else None

    def _continue_logits(self, state: State) -> Tensor:
        inputs = state.deter if self.config.continue_input == "deter" else self.features(state)
        return float32(self.cont(inputs)).squeeze(-1)

    def continue_prob(self, state: State) -> Optional[Tensor]:
        """P(the episode goes on) at ``state (*batch,)`` -> ``(*batch,)``, from the continue
        head; None without one."""
        return None if self.cont is None else torch.sigmoid(self._continue_logits(state))

    def decode(self, features: Tensor) -> Tensor:
        prediction = predict(float32(self.decoder(features)), self.likelihood)  # (..., *O), standardised for vectors
        return prediction if self.spec.pixels else prediction * self.obs_std + self.obs_mean

    def observe(self, obs: Tensor, prev_action: Tensor, is_first: Tensor,
                state: Optional[State] = None) -> tuple[State, State]:
        self._check_sequence(obs, prev_action, is_first)
        embed = self.encoder(self._normalize(self.preprocess_obs(obs)))  # (B, T, E)
        posterior, prior_raw = self._filter(embed, prev_action, is_first, state)
        prior_stoch = self._sample(prior_raw, self._noise(tuple(is_first.shape)))
        prior = self._state(posterior.deter, prior_stoch, self._params_from_raw(prior_raw))
        return posterior, prior

    def obs_step(self, state: State, prev_action: Tensor, obs: Tensor, is_first: Tensor) -> State:
        obs, prev_action, is_first = obs.unsqueeze(1), prev_action.unsqueeze(1), is_first.unsqueeze(1)
        self._check_sequence(obs, prev_action, is_first)
        embed = self.encoder(self._normalize(self.preprocess_obs(obs)))
        posterior, _ = self._filter(embed, prev_action, is_first, state)
        return posterior[:, 0]

    def imagine_step(self, state: State, action: Tensor) -> State:
        act = self._act
        lowered = self._lowered_step_weights()
        if lowered is None:
            x = act(onehot.linear(self.img_in_stoch, state.stoch, self._onehot(state)) + self.img_in_action(action))
            deter = self.cell(x, state.deter)
            raw = float32(self.prior_out(act(self.prior_hidden(deter))))
        else:  # the same ops on weights lowered once (autocast would lower them at every step)
            w_stoch, w_action, b_action, w_cell, w_hidden, b_hidden, w_out, b_out = lowered
            x = act(F.linear(state.stoch, w_stoch) + F.linear(action, w_action, b_action))
            deter = self.cell.from_linear(F.linear(self.cell.linear_input(x, state.deter), w_cell), state.deter)
            raw = float32(F.linear(act(F.linear(deter, w_hidden, b_hidden)), w_out, b_out))
        stoch, index, params = self._draw(raw)
        return self._state(deter, stoch, params, index)

    def _lowered_step_weights(self) -> Optional[tuple[Tensor, ...]]:
        """The weights of :meth:`imagine_step` in autocast's lower dtype, cast once per
        :func:`wmil.nets.reuse.unchanged_weights` block (an imagined rollout) — or None (the
        plain modules) when autocast is off, when any of them requires grad (world-model
        training: the cast must stay in the graph) or while compiling.

        An imagination learner holds the model frozen (``requires_grad=False``), and autocast
        caches the casts of trainable leaves only, so without this every imagined step re-cast
        ~0.7 M weights of the small RSSM (~6 ms of a bf16 DITTO update on 2 threads). The
        products are the ones autocast runs (the same bf16 round of the same fp32 weights), so
        the results are equal bit for bit. Outside a block the weights are cast at every call,
        as autocast would.
        """
        low = lowered_dtype(self.prior_out.weight.device.type)
        if low is None or torch.compiler.is_compiling():
            return None
        weights = (self.img_in_stoch.weight, self.img_in_action.weight, self.img_in_action.bias,
                   self.cell.linear.weight, self.prior_hidden.weight, self.prior_hidden.bias,
                   self.prior_out.weight, self.prior_out.bias)
        if any(w.requires_grad for w in weights):
            return None
        return derived(("rssm-step", low, *(w.data_ptr() for w in weights)), lambda: tuple(w.to(low) for w in weights))

    #: Compute the weight gradients of the layers inside the posterior loop once per sequence
    #: (:mod:`wmil.nets.step_linear`) rather than once per step. Only the rounding of those
    #: sums differs; False gives plain autograd (the tests compare the two).
    step_tape: bool = True

    def _filter(self, embed: Tensor, prev_action: Tensor, is_first: Tensor,
                state: Optional[State]) -> tuple[State, Tensor]:
        """The sequential posterior loop. ``embed (B, T, E)``, ``prev_action (B, T, A)``,
        ``is_first (B, T)`` -> posterior ``(B, T)`` and the prior head outputs ``(B, T, R)``."""
        B, T = is_first.shape
        act = self._act
        if state is None:
            state = self.initial(B)
        # Batched before the loop, time-major so that each step's (B, H) slice is contiguous.
        # Split with unbind: its backward stacks the T slices' gradients once, where indexing
        # [t] would give every step a zero-filled (T, B, H) gradient to add up (O(T²) work).
        action_in = self.img_in_action(prev_action).transpose(0, 1).contiguous().unbind(0)  # T × (B, H)
        embed_in = self.post_embed(embed).transpose(0, 1).contiguous().unbind(0)            # T × (B, H)
        noise = self._noise((T, B))                                                          # (T, B, S)
        # Which steps reset some row: read on the host once per sequence on a CPU; on an
        # accelerator (and under torch.export, where the flags are not known) every step
        # multiplies by `keep` instead (x·1 = x exactly), so the loop never waits for the device.
        on_host = is_first.device.type == "cpu" and not torch.compiler.is_exporting()
        resets = is_first.any(0).tolist() if on_host else [True] * T
        keep = (~is_first).transpose(0, 1).unsqueeze(-1).to(embed_in[0].dtype)    # (T, B, 1)
        cell = self.cell
        # The step's linear maps as (in, out) matrices: [stoch-in, GRU, posterior hidden,
        # posterior out]; only the last has a bias (the others' come with action_in/embed_in).
        weights = [self.img_in_stoch.weight.t(), cell.linear.weight.t(), self.post_deter.weight.t(),
                   self.post_out.weight.t()]
        biases = [None, None, None, self.post_out.bias]
        low = lowered_dtype(embed.device.type)
        if low is not None:  # bf16 autocast: cast the weights once, not at every step
            weights = [w.to(low) for w in weights]
            biases = [None if b is None else b.to(low) for b in biases]

        deter, stoch = state.deter, state.stoch
        if self.step_tape and torch.is_grad_enabled():
            tape = StepTape(weights, biases)
            deter, stoch = tape.start(deter, stoch)
            linear = tape.linear
        else:
            def linear(layer: int, x: Tensor, add: Optional[Tensor] = None) -> Tensor:
                base = add if add is not None else biases[layer]
                return torch.mm(x, weights[layer]) if base is None else torch.addmm(base, x, weights[layer])

        deters, stochs, raws = [], [], []
        for t in range(T):
            if resets[t]:  # back to the (zero) initial state where an episode starts
                deter = deter * keep[t]
                stoch = stoch * keep[t]
            x = act(linear(0, stoch, action_in[t]))
            deter = cell.from_linear(linear(1, cell.linear_input(x, deter)), deter)
            # Latent logits and samples stay float32 under bf16 autocast.
            raw = float32(linear(3, act(linear(2, deter, embed_in[t]))))
            stoch = self._sample(raw, noise[t])
            deters.append(deter)
            stochs.append(stoch)
            raws.append(raw)

        deter_seq = torch.stack(deters, 1)  # (B, T, D)
        posterior = self._state(deter_seq, torch.stack(stochs, 1),
                                self._params_from_raw(torch.stack(raws, 1)))
        prior_raw = float32(self.prior_out(act(self.prior_hidden(deter_seq))))  # (B, T, R), batched
        return posterior, prior_raw

    def loss(self, batch: SequenceBatch) -> tuple[dict[str, Tensor], dict[str, float], State]:
        c = self.config
        self._check_sequence(batch.obs, batch.prev_action, batch.is_first)
        target = self._normalize(self.preprocess_obs(batch.obs))  # (B, T, *O)
        embed = self.encoder(target)                             # (B, T, E)
        posterior, prior_raw = self._filter(embed, batch.prev_action, batch.is_first, None)
        prior_params = self._params_from_raw(prior_raw)
        post_params = self._params(posterior)
        features = self.features(posterior)                      # (B, T, F)

        obs_dims = tuple(range(2, target.dim()))
        nll, prediction = observation_nll(float32(self.decoder(features)), target, self.likelihood)
        squared = (prediction.detach() - target).pow(2)
        mask = batch.mask                                        # (B, T) or None: padding is left out
        losses = {"obs": masked_mean(nll.sum(obs_dims), mask)}   # −log p(o | h, z)
        losses["kl"], kl_value = kl_balance(self._kl, post_params, prior_params,
                                            c.kl_balance, c.free_nats, mask)
        if self.reward is not None:
            reward = float32(self.reward(features)).squeeze(-1)
            losses["reward"] = masked_mean(0.5 * (reward - batch.reward).pow(2), mask)
        if self.cont is not None:
            logits = self._continue_logits(posterior)
            target_cont = (~batch.is_terminal).to(logits.dtype)
            losses["cont"] = masked_mean(F.binary_cross_entropy_with_logits(logits, target_cont, reduction="none"), mask)
        assert set(losses) == set(self.loss_scales), "loss terms and loss_scales differ"

        with torch.no_grad():
            metrics = {
                "kl": kl_value.item(),
                "obs_mse": masked_mean(squared.mean(obs_dims), mask).item(),
                "posterior_entropy": self._entropy(post_params).mean().item(),
                "prior_entropy": self._entropy(prior_params).mean().item(),
            }
        return losses, metrics, posterior


__all__ = ["RecurrentConfig", "RSSMConfig", "RSSM"]
