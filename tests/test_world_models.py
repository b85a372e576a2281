"""World models: one conformance suite over every registered model and observation/action
kind, the latent math against hand-computed values, and a small learning test."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from wmil.errors import UserError
from wmil.nets.reuse import unchanged_weights
from wmil.precision import autocast
from wmil.types import DataSpec, SequenceBatch
from wmil.world_models import (PRESETS, WORLD_MODELS, State, config_for, field_docs,
                               make_world_model, total_loss)
from wmil.world_models.base import FEATURES, feature_size
from wmil.world_models.latent import (categorical_kl, free_nats, gaussian_kl, gumbel_noise, kl_balance,
                                      std_from_raw, straight_through_sample, unimix_draw,
                                      unimix_logits)

B, T = 3, 6
RESET = (1, 3)  # (batch element, step) of an episode start inside the window


def make_spec(obs: str, discrete: bool) -> DataSpec:
    shape, dtype = ((5,), "float32") if obs == "vector" else ((1, 64, 64), "uint8")
    if discrete:
        return DataSpec(shape, dtype, action_dim=3, discrete=True)
    return DataSpec(shape, dtype, action_dim=2, discrete=False,
                    action_low=(-1.0, -1.0), action_high=(1.0, 1.0))


def make_batch(spec: DataSpec, seed: int = 0, batch: int = B, steps: int = T) -> SequenceBatch:
    """Random windows that follow the time alignment of wmil.types, with one episode start
    at step 0 of every row and one inside row RESET[0]."""
    gen = torch.Generator().manual_seed(seed)
    if spec.pixels:
        obs = torch.randint(0, 256, (batch, steps, *spec.obs_shape), dtype=torch.uint8, generator=gen)
    else:
        obs = torch.randn(batch, steps, *spec.obs_shape, generator=gen)
    if spec.discrete:
        index = torch.randint(0, spec.action_dim, (batch, steps), generator=gen)
        action = F.one_hot(index, spec.action_dim).float()
    else:
        action = torch.rand(batch, steps, spec.action_dim, generator=gen) * 2 - 1
    is_first = torch.zeros(batch, steps, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[RESET] = True
    prev_action = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
    prev_action[is_first] = 0.0
    return SequenceBatch(obs=obs, prev_action=prev_action, action=action,
                         reward=torch.randn(batch, steps, generator=gen), is_first=is_first,
                         is_terminal=torch.zeros(batch, steps, dtype=torch.bool),
                         action_mask=torch.ones(batch, steps, dtype=torch.bool))


CASES = [(name, obs, discrete)
         for name in WORLD_MODELS
         for obs in ("vector", "pixel")
         for discrete in (True, False)
         if not (name == "dynamics" and obs == "pixel")]
IDS = [f"{name}-{obs}-{'discrete' if discrete else 'continuous'}" for name, obs, discrete in CASES]


def build(name, obs, discrete, seed=0, **overrides):
    torch.manual_seed(seed)
    spec = make_spec(obs, discrete)
    return make_world_model(name, spec, config_for(name, "tiny", **overrides)), spec


# ------------------------------------------------------------------ conformance suite

@pytest.mark.parametrize("name,obs,discrete", CASES, ids=IDS)
def test_shapes(name, obs, discrete):
    model, spec = build(name, obs, discrete)
    batch = make_batch(spec)
    O, A, F_ = spec.obs_shape, spec.action_dim, model.feature_dim
    posterior, prior = model.observe(batch.obs, batch.prev_action, batch.is_first)
    assert posterior.batch_shape == prior.batch_shape == (B, T)
    assert model.features(posterior).shape == model.features(prior).shape == (B, T, F_)
    assert model.decode(model.features(posterior)).shape == (B, T, *O)
    assert model.preprocess_obs(batch.obs).shape == (B, T, *O)

    last = posterior[:, -1]
    assert last.batch_shape == (B,)
    imagined = model.imagine_step(last, torch.zeros(B, A))
    assert imagined.batch_shape == (B,) and model.features(imagined).shape == (B, F_)
    stepped = model.obs_step(last, batch.action[:, -1], batch.obs[:, -1], torch.zeros(B, dtype=torch.bool))
    assert stepped.batch_shape == (B,) and model.features(stepped).shape == (B, F_)
    assert model.features(model.initial(B)).shape == (B, F_)

    encoded = model.encode_sequence(batch)
    assert encoded.batch_shape == (B, T) and not model.features(encoded).requires_grad
    assert model.open_loop(batch, context=2, horizon=4).shape == (B, 4, *O)
    with pytest.raises(UserError, match="context"):
        model.open_loop(batch, context=3, horizon=4)


@pytest.mark.parametrize("name,obs,discrete", CASES, ids=IDS)
def test_is_first_resets_the_state(name, obs, discrete):
    model, spec = build(name, obs, discrete)
    batch = make_batch(spec, seed=1)
    other = make_batch(spec, seed=2)  # a different history before the reset
    row, step = RESET
    obs_b = other.obs.clone()
    obs_b[:, step:] = batch.obs[:, step:]
    outputs = []
    for history, seed in ((batch.obs, 0), (obs_b, 1)):
        torch.manual_seed(seed)
        start = model.initial(B).map(lambda x: torch.randn_like(x))  # an arbitrary prior state
        posterior, prior = model.observe(history, batch.prev_action, batch.is_first, start)
        outputs.append((posterior, prior))
    (post_a, prior_a), (post_b, prior_b) = outputs
    # The deterministic part at an episode start forgets the state and history before it.
    assert torch.allclose(prior_a.deter[:, 0], prior_b.deter[:, 0], atol=1e-6)
    assert torch.allclose(prior_a.deter[row, step], prior_b.deter[row, step], atol=1e-6)
    assert torch.allclose(post_a.deter[row, step], post_b.deter[row, step], atol=1e-6)
    # ...while a row without a reset at that step does depend on its history.
    assert not torch.allclose(prior_a.deter[0, step], prior_b.deter[0, step])
    # obs_step with is_first agrees with observe at the episode start.
    torch.manual_seed(3)
    stepped = model.obs_step(post_a[:, 2], batch.prev_action[:, step], batch.obs[:, step],
                             batch.is_first[:, step])
    assert torch.allclose(stepped.deter[row], post_a.deter[row, step], atol=1e-6)


@pytest.mark.parametrize("name,obs,discrete", CASES, ids=IDS)
def test_loss_keys_match_scales_and_gradients_reach_every_parameter(name, obs, discrete):
    # Free nats would (rightly) cut the prior's gradient while the KL is small.
    model, spec = build(name, obs, discrete, **({} if name == "dynamics" else {"free_nats": 0.0}))
    losses, metrics, posterior = model.loss(make_batch(spec))
    assert set(losses) == set(model.loss_scales)
    assert all(value.dim() == 0 and torch.isfinite(value) for value in losses.values())
    assert all(isinstance(value, float) and math.isfinite(value) for value in metrics.values())
    assert posterior.batch_shape == (B, T)
    total_loss(losses, model.loss_scales).backward()
    for pname, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{pname} has a non-finite gradient"
        assert parameter.grad.abs().sum() > 0, f"{pname} gets a zero gradient"


@pytest.mark.parametrize("name", ["rssm", "gaussian_rssm"])
def test_optional_heads_add_their_terms(name):
    model, spec = build(name, "vector", True, reward_head=True, continue_head=True)
    losses, _, _ = model.loss(make_batch(spec))
    assert set(losses) == set(model.loss_scales) == {"obs", "kl", "reward", "cont"}
    with pytest.raises(AssertionError, match="do not match"):
        total_loss(losses, {"obs": 1.0, "kl": 1.0})


@pytest.mark.parametrize("name", list(WORLD_MODELS))
def test_imagine_step_is_differentiable_wrt_continuous_actions(name):
    model, spec = build(name, "vector", False)
    batch = make_batch(spec)
    state = model.encode_sequence(batch)[:, -1]
    actions = torch.zeros(4, B, spec.action_dim, requires_grad=True)
    for action in actions:
        state = model.imagine_step(state, action)
    model.features(state).pow(2).sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0
    assert (actions.grad.abs().sum((1, 2)) > 0).all(), "every imagined step's action gets gradient"


@pytest.mark.parametrize("name,obs,discrete", CASES, ids=IDS)
def test_deterministic_under_a_fixed_seed(name, obs, discrete):
    results = []
    for _ in range(2):
        model, spec = build(name, obs, discrete, seed=7)
        torch.manual_seed(11)
        losses, _, posterior = model.loss(make_batch(spec))
        results.append((losses, model.features(posterior)))
    (losses_a, feats_a), (losses_b, feats_b) = results
    assert all(torch.equal(losses_a[k], losses_b[k]) for k in losses_a)
    assert torch.equal(feats_a, feats_b)


@pytest.mark.parametrize("name,obs,discrete", CASES, ids=IDS)
def test_bf16_autocast_lowers_the_products_and_keeps_the_sensitive_parts_fp32(name, obs, discrete):
    """Under bf16 autocast the linear and conv layers run in bf16, while the latent state, the
    latent parameters, the predictions and every loss term stay float32, and the float32
    parameters get finite gradients (DESIGN.md: KL and losses in fp32)."""
    model, spec = build(name, obs, discrete)
    lowered = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.register_forward_hook(lambda m, args, out: lowered.append(out.dtype))
    batch = make_batch(spec)
    with autocast("cpu", "bf16"):
        losses, metrics, posterior = model.loss(batch)
        state = model.imagine_step(posterior[:, -1], batch.action[:, -1])
        prediction = model.decode(model.features(state))
    assert lowered and set(lowered) == {torch.bfloat16}, set(lowered)
    assert all(v.dtype == torch.float32 for v in losses.values()), {k: v.dtype for k, v in losses.items()}
    for which in (posterior, state):  # the float fields (index, the columns of z's ones, is an integer)
        assert {v.dtype for k, v in which.tensors().items() if k != "index"} == {torch.float32}, which
        assert which.index is None or which.index.dtype == torch.int64
    assert prediction.dtype == torch.float32
    assert all(math.isfinite(v) for v in metrics.values())
    total_loss(losses, model.loss_scales).backward()
    for pname, param in model.named_parameters():
        assert param.dtype == torch.float32 and param.grad is not None, pname
        assert param.grad.dtype == torch.float32 and torch.isfinite(param.grad).all(), pname


@pytest.mark.parametrize("name,obs,discrete", [c for c in CASES if c[0] != "dynamics"],
                         ids=[i for c, i in zip(CASES, IDS) if c[0] != "dynamics"])
def test_step_tape_changes_only_the_rounding_of_the_gradients(name, obs, discrete, monkeypatch):
    """The posterior loop's weight gradients summed once per sequence (the default) against
    plain autograd: the same loss bit for bit, the same gradients up to float32 rounding."""
    from wmil.world_models.rssm import RSSM

    model, spec = build(name, obs, discrete)
    batch = make_batch(spec)
    results = []
    for tape in (False, True):
        monkeypatch.setattr(RSSM, "step_tape", tape)
        model.zero_grad()
        torch.manual_seed(5)
        losses, _, _ = model.loss(batch)
        total_loss(losses, model.loss_scales).backward()
        results.append(({k: v.detach() for k, v in losses.items()},
                        {k: p.grad.clone() for k, p in model.named_parameters()}))
    (plain_losses, plain), (taped_losses, taped) = results
    assert all(torch.equal(plain_losses[k], taped_losses[k]) for k in plain_losses)
    for key in plain:
        scale = plain[key].abs().max()
        torch.testing.assert_close(taped[key], plain[key], rtol=1e-5, atol=1e-6 * float(scale), msg=key)


def test_bf16_changes_the_loss_only_by_rounding():
    """The same model and batch in fp32 and under bf16 autocast: every loss term agrees to bf16
    precision (a cast in the wrong place, e.g. of a latent sample, would change far more)."""
    model, spec = build("rssm", "vector", True)
    batch = make_batch(spec, batch=16, steps=12)
    terms = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(3)
        with autocast("cpu", precision):
            losses, _, _ = model.loss(batch)
        terms[precision] = {k: float(v.detach()) for k, v in losses.items()}
    assert terms["bf16"] != terms["fp32"], "autocast changed nothing: bf16 did not run"
    assert terms["bf16"] == pytest.approx(terms["fp32"], rel=0.05)


def test_bf16_on_a_cpu_without_native_bf16_warns_once_in_one_line(tmp_path, monkeypatch):
    """The CPU's flags decide: AVX2 only warns (emulated bf16 measured 6.6× slower than fp32),
    AVX512-BF16 or AMX-BF16 does not, fp32 never does, unreadable flags (not Linux) stay quiet."""
    import warnings

    from benchmarks.common import cpu_capability
    from wmil import precision
    from wmil.errors import WmilWarning

    original = precision.cpu_flags

    def flags(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(precision, "cpu_flags", lambda: original(path))

    cases = {"processor\t: 0\nflags\t\t: fpu sse avx2 fma\n": True,
             "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16\n": False,
             "processor\t: 0\nflags\t\t: avx2 amx_bf16 amx_tile\n": False}
    for text, expected in cases.items():
        flags(text)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert precision.warn_if_emulated("cpu", "bf16") is expected
            assert not precision.warn_if_emulated("cpu", "fp32")
        messages = [str(w.message) for w in caught if issubclass(w.category, WmilWarning)]
        assert len(messages) == int(expected), messages
        assert all("\n" not in m and "--precision fp32" in m for m in messages)
        # The benchmarks' stamp tells the two kinds of machine apart (both are "AMD EPYC").
        assert cpu_capability().endswith("bf16 emulated" if expected else "native bf16")
    assert original(tmp_path / "absent") is None
    monkeypatch.setattr(precision, "cpu_flags", lambda: None)
    assert precision.native_bf16("cpu") is None and not precision.warn_if_emulated("cpu", "bf16")
    assert cpu_capability().endswith("bf16 unknown")


@pytest.mark.parametrize("name,discrete", [("rssm", True), ("gaussian_rssm", False)])
def test_a_frozen_model_imagines_the_same_with_its_step_weights_lowered_once(name, discrete):
    """A frozen model (as the imagination learners hold it) under bf16 autocast runs
    ``imagine_step`` on weights cast once per rollout (an ``unchanged_weights`` block) and
    reused, where autocast would cast them at every step: the imagined state equals the plain
    modules' bit for bit, the cast is reused from one step to the next inside a block and made
    anew in the next, so an in-place change of a weight between them is seen — also one by
    torch's fused Adam, which does not bump the version counter."""
    model, spec = build(name, "vector", discrete)
    batch = make_batch(spec)
    with torch.no_grad():
        posterior, _ = model.observe(batch.obs, batch.prev_action, batch.is_first)
    start, action = posterior[:, -1], batch.action[:, -1]

    def step(frozen: bool, precision: str = "bf16") -> dict:
        model.requires_grad_(not frozen)
        torch.manual_seed(7)
        with autocast("cpu", precision):
            return model.imagine_step(start, action).tensors()

    def equal(a: dict, b: dict) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    plain, frozen = step(False), step(True)
    assert equal(plain, frozen)
    assert not equal(step(True, "fp32"), frozen), "bf16 did not run"
    with autocast("cpu", "bf16"), unchanged_weights():
        first, again = model._lowered_step_weights(), model._lowered_step_weights()
    assert first is not None and all(w.dtype == torch.bfloat16 for w in first)
    assert all(a is b for a, b in zip(first, again)), "the cast was not reused"
    with torch.no_grad():
        model.prior_out.weight.mul_(1.5)
    changed = step(True)
    assert not equal(changed, frozen), "a stale cast was used after the weight changed"
    assert equal(changed, step(False))
    model.requires_grad_(True)
    model.prior_out.weight.grad = torch.ones_like(model.prior_out.weight)
    torch.optim.Adam([model.prior_out.weight], lr=0.1, fused=True).step()
    model.requires_grad_(False)
    with autocast("cpu", "bf16"), unchanged_weights():
        stepped = model._lowered_step_weights()
    assert not torch.equal(stepped[-2], first[-2]) and torch.equal(stepped[-2], model.prior_out.weight.to(torch.bfloat16))
    model.requires_grad_(True)
    with autocast("cpu", "bf16"):
        assert model._lowered_step_weights() is None  # a trained model keeps autocast's cast in the graph


@pytest.mark.parametrize("name,obs,discrete", [("rssm", "vector", True), ("gaussian_rssm", "vector", False),
                                               ("dynamics", "vector", False), ("rssm", "pixel", True)])
def test_padded_steps_do_not_change_the_loss(name, obs, discrete):
    """Windows of short episodes are right-padded with mask=False: padding is left out."""
    from dataclasses import replace

    model, spec = build(name, obs, discrete)
    batch = make_batch(spec)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, T - 2:] = False
    garbage = batch.obs.clone()
    garbage[:, T - 2:] = 200 if spec.pixels else 1e3
    losses = []
    for observations in (batch.obs, garbage):
        torch.manual_seed(1)
        terms, _, _ = model.loss(replace(batch, obs=observations, mask=mask))
        losses.append({k: float(v.detach()) for k, v in terms.items()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    torch.manual_seed(1)
    unmasked, _, _ = model.loss(replace(batch, obs=garbage))
    assert any(float(unmasked[k]) != pytest.approx(losses[1][k], rel=1e-3) for k in unmasked)


def test_dynamics_rejects_pixels_with_one_line():
    with pytest.raises(UserError) as error:
        make_world_model("dynamics", make_spec("pixel", True), config_for("dynamics", "tiny"))
    assert "\n" not in str(error.value) and "vector" in str(error.value)


def test_dynamics_normalizer_running_then_fixed():
    model, spec = build("dynamics", "vector", False)
    batch = make_batch(spec)
    batch = dataclasses.replace(batch, obs=batch.obs * 3.0 + 2.0)
    model.loss(batch)
    flat = batch.obs.reshape(-1, 5)
    assert torch.allclose(model.obs_mean, flat.mean(0), atol=1e-5)
    assert torch.allclose(model.obs_std, flat.std(0, unbiased=False), atol=1e-4)
    model.set_normalizer(torch.zeros(5), torch.full((5,), 2.0))
    model.loss(batch)  # fixed: no further updates
    assert torch.equal(model.obs_mean, torch.zeros(5)) and torch.allclose(model.obs_std, torch.full((5,), 2.0))
    features = model.features(model.encode_sequence(batch))
    assert torch.allclose(features, batch.obs / 2.0) and torch.allclose(model.decode(features), batch.obs)
    with pytest.raises(UserError, match="shape"):
        model.set_normalizer(torch.zeros(4), torch.ones(4))


def test_dynamics_on_reduced_states():
    """obs_indices (the VINS paper's set-up): M reads and predicts coordinates 0 and 3 only,
    carries the others over unchanged, and its loss ignores them."""
    model, spec = build("dynamics", "vector", False, obs_indices="0,3")
    assert model.net.in_dim == 2 + spec.action_dim and model.net.out_dim == 2
    batch = make_batch(spec)
    posterior, _ = model.observe(batch.obs, batch.prev_action, batch.is_first)
    state = posterior[:, 0]
    following = model.imagine_step(state, batch.action[:, 0])
    carried = [1, 2, 4]
    assert torch.equal(following.deter[:, carried], state.deter[:, carried])
    assert not torch.equal(following.deter[:, [0, 3]], state.deter[:, [0, 3]])
    losses, _, _ = model.loss(batch)
    noisy = batch.obs.clone()
    noisy[..., carried] += 100.0 * torch.randn_like(noisy[..., carried])
    model.set_normalizer(model.obs_mean, model.obs_std)  # the same normalisation for both batches
    torch.testing.assert_close(model.loss(dataclasses.replace(batch, obs=noisy))[0]["dynamics"],
                               model.loss(batch)[0]["dynamics"])
    with pytest.raises(UserError, match="obs_indices"):
        build("dynamics", "vector", False, obs_indices="0,9")


@pytest.mark.parametrize("name,obs,discrete", CASES, ids=IDS)
def test_features_modes(name, obs, discrete):
    model, spec = build(name, obs, discrete)
    batch = make_batch(spec)
    posterior, prior = model.observe(batch.obs, batch.prev_action, batch.is_first)
    for state in (posterior, prior):
        sample, mean, deter = (model.features(state, mode) for mode in FEATURES)
        assert sample.shape == (B, T, model.feature_dim) == (B, T, feature_size(model, "sample"))
        assert mean.shape == sample.shape and mean.shape[-1] == feature_size(model, "mean")
        assert deter.shape[-1] == feature_size(model, "deter") and torch.equal(deter, state.deter)
        D = deter.shape[-1]
        assert torch.equal(mean[..., :D], state.deter) and torch.equal(sample[..., D:], state.stoch)
        if name == "rssm":  # class probabilities: each categorical sums to one, softmax of its logits
            classes = model.config.classes
            probs = mean[..., D:].unflatten(-1, (-1, classes))
            assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
            assert torch.allclose(probs, torch.softmax(state.logits.unflatten(-1, (-1, classes)), -1))
            assert not torch.equal(mean, sample)
        elif name == "gaussian_rssm":
            assert torch.equal(mean[..., D:], state.mean) and not torch.equal(mean, sample)
        else:  # dynamics: no stochastic part, every mode is the normalised observation
            assert torch.equal(mean, sample) and torch.equal(deter, sample)
    with pytest.raises(UserError, match="choose one of"):
        model.features(posterior, "probs")


@pytest.mark.parametrize("name", ["rssm", "gaussian_rssm"])
def test_recurrent_models_standardise_vector_observations(name):
    """With statistics (m, s) set, observations m + s·x give exactly the loss that x gives with
    the identity statistics, and ``decode`` maps predictions back to raw units."""
    model, spec = build(name, "vector", True)
    scaled, _ = build(name, "vector", True)
    scaled.load_state_dict(model.state_dict())
    mean, std = torch.tensor([1.0, -2.0, 0.0, 5.0, 3.0]), torch.tensor([0.01, 2.0, 1.0, 10.0, 0.5])
    scaled.set_normalizer(mean, std)
    batch = make_batch(spec)
    raw = dataclasses.replace(batch, obs=batch.obs * std + mean)
    torch.manual_seed(0)
    losses, _, posterior = model.loss(batch)
    torch.manual_seed(0)
    losses_scaled, _, posterior_scaled = scaled.loss(raw)
    for key in losses:
        torch.testing.assert_close(losses_scaled[key], losses[key])
    features = model.features(posterior)
    torch.testing.assert_close(scaled.features(posterior_scaled), features)
    torch.testing.assert_close(scaled.decode(features), model.decode(features) * std + mean)
    # A checkpoint from before the statistics existed loads as the identity.
    old = {k: v for k, v in scaled.state_dict().items() if k not in ("obs_mean", "obs_std")}
    model.load_state_dict(old)
    assert torch.equal(model.obs_mean, torch.zeros(5)) and torch.equal(model.obs_std, torch.ones(5))
    # normalize_obs=False keeps raw units whatever the trainer passes.
    plain, _ = build(name, "vector", True, normalize_obs=False)
    plain.set_normalizer(mean, std)
    assert torch.equal(plain.obs_mean, torch.zeros(5)) and torch.equal(plain.obs_std, torch.ones(5))


# ------------------------------------------------------------------ registry and configs

def test_registry_and_configs():
    assert set(WORLD_MODELS) == {"rssm", "gaussian_rssm", "dynamics"}
    for name, model_cls in WORLD_MODELS.items():
        assert set(model_cls.config_cls.PRESETS) == set(PRESETS)
        docs = field_docs(model_cls.config_cls)
        for field in dataclasses.fields(model_cls.config_cls):
            assert docs.get(field.name), f"{name}: field {field.name} has no docstring"
    config = config_for("rssm", "small", kl_scale="0.5", unimix="0.01", kl_balance="none")
    assert config.kl_scale == 0.5 and config.unimix == 0.01 and config.kl_balance is None
    assert config_for("rssm", "paper").deter == 1024
    paper = config_for("gaussian_rssm", "paper")
    assert (paper.free_nats, paper.kl_balance, paper.min_std) == (3.0, None, 0.1)
    with pytest.raises(UserError, match="valid fields"):
        config_for("rssm", "tiny", not_a_field=1)
    with pytest.raises(UserError, match="preset"):
        config_for("rssm", "huge")
    with pytest.raises(UserError, match="unknown world model"):
        make_world_model("transformer", make_spec("vector", True))
    with pytest.raises(UserError, match="RSSMConfig"):
        make_world_model("rssm", make_spec("vector", True), config_for("dynamics", "tiny"))


def test_state_indexing_stacking_and_reshaping():
    state = State(deter=torch.randn(2, 5, 4), stoch=torch.randn(2, 5, 3), logits=torch.randn(2, 5, 3))
    assert state[:, 1].batch_shape == (2,)
    assert torch.equal(state[:, 1].logits, state.logits[:, 1])
    stacked = State.stack([state[:, t] for t in range(5)], dim=1)
    assert all(torch.equal(a, b) for a, b in zip(stacked.tensors().values(), state.tensors().values()))
    assert state.flatten().batch_shape == (10,) and state.reshape(5, 2).batch_shape == (5, 2)
    assert State.cat([state, state], 1).batch_shape == (2, 10)
    assert state.mean is None and set(state.tensors()) == {"deter", "stoch", "logits"}
    mixed = state.where(torch.tensor([[True] * 5, [False] * 5]), state.map(torch.zeros_like))
    assert torch.equal(mixed.deter[0], state.deter[0]) and (mixed.deter[1] == 0).all()
    leaf = State(deter=torch.randn(2, 4, requires_grad=True), stoch=torch.randn(2, 3))
    assert not leaf.detach().deter.requires_grad
    assert "deter=(2, 5, 4)" in repr(state)


# ------------------------------------------------------------------ latent math by hand

def _logits(*probs):
    return torch.log(torch.tensor([probs]))


def test_kl_balance_value_and_gradients_by_hand():
    # q = (0.75, 0.25), p = (0.5, 0.5): KL = .75 ln 1.5 + .25 ln .5 = 0.130812
    q = _logits(0.75, 0.25).requires_grad_()
    p = _logits(0.5, 0.5).requires_grad_()
    kl = lambda a, b: categorical_kl(a, b, classes=2)
    loss, value = kl_balance(kl, q, p, balance=0.8)
    assert value.item() == pytest.approx(0.130812, abs=1e-5)
    assert loss.item() == pytest.approx(0.130812, abs=1e-5)
    loss.backward()
    # dKL/dlogits_p = p - q = (-0.25, 0.25), weighted by α = 0.8 (the prior side)
    assert torch.allclose(p.grad, torch.tensor([[-0.2, 0.2]]), atol=1e-6)
    # dKL/dlogits_q = q ⊙ (log q − log p − KL) = (0.205990, −0.205990), weighted by 1 − α
    assert torch.allclose(q.grad, torch.tensor([[0.041198, -0.041198]]), atol=1e-5)


def test_kl_balance_matches_the_two_term_formula_and_plain_kl():
    torch.manual_seed(0)
    q0, p0 = torch.randn(4, 6), torch.randn(4, 6)
    kl = lambda a, b: categorical_kl(a, b, classes=3)

    def grads(fn):
        q, p = q0.clone().requires_grad_(), p0.clone().requires_grad_()
        fn(q, p).backward()
        return q.grad, p.grad

    balanced = grads(lambda q, p: kl_balance(kl, q, p, 0.8)[0])
    two_terms = grads(lambda q, p: 0.8 * kl(q.detach(), p).mean() + 0.2 * kl(q, p.detach()).mean())
    plain = grads(lambda q, p: kl_balance(kl, q, p, None)[0])
    reference = grads(lambda q, p: kl(q, p).mean())
    for a, b in zip(balanced + plain, two_terms + reference):
        assert torch.allclose(a, b, atol=1e-6)


def test_free_nats_clamp():
    kl = torch.tensor(0.4, requires_grad=True)
    clamped = free_nats(kl, 1.0)
    clamped.backward()
    assert clamped.item() == 1.0 and kl.grad.item() == 0.0
    above = torch.tensor(2.5, requires_grad=True)
    free_nats(above, 1.0).backward()
    assert above.grad.item() == 1.0
    assert free_nats(torch.tensor(0.4), 0.0).item() == pytest.approx(0.4)
    q, p = _logits(0.75, 0.25), _logits(0.5, 0.5)
    loss, value = kl_balance(lambda a, b: categorical_kl(a, b, 2), q, p, 0.8, free=0.5)
    assert loss.item() == 0.5 and value.item() == pytest.approx(0.130812, abs=1e-5)


def test_straight_through_sample_forward_one_hot_backward_probs():
    logits = torch.log(torch.tensor([[0.25, 0.75, 1e-3, 1.0]])).requires_grad_()  # 2 vars × 2
    sample = straight_through_sample(logits, classes=2, noise=torch.zeros(1, 4))
    assert torch.equal(sample.detach(), torch.tensor([[0.0, 1.0, 0.0, 1.0]]))
    (sample * torch.tensor([1.0, 0.0, 0.0, 0.0])).sum().backward()
    # d p0 / d logits of softmax(0.25, 0.75) = (p0 (1 − p0), −p0 p1) = (0.1875, −0.1875)
    assert torch.allclose(logits.grad, torch.tensor([[0.1875, -0.1875, 0.0, 0.0]]), atol=1e-6)
    # Gumbel noise picks the class it favours.
    forced = straight_through_sample(logits.detach(), 2, noise=torch.tensor([[9.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(forced, torch.tensor([[1.0, 0.0, 0.0, 1.0]]))


@pytest.mark.parametrize("draw", ["inverse_cdf", "gumbel"])
def test_straight_through_samples_follow_the_probabilities(draw):
    """Both ways of drawing (fresh uniforms through the CDF, given Gumbel noise) sample each
    categorical with its probabilities, including a class of probability 0 and the last one."""
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.0, 0.3, 0.6, 0.2, 0.8, 0.0, 0.0])  # 2 categoricals of 4
    logits = torch.log(probs.clamp(min=1e-30)).repeat(40000, 1)
    noise = gumbel_noise(tuple(logits.shape)) if draw == "gumbel" else None
    sample = straight_through_sample(logits, 4, noise)
    assert torch.equal(sample.reshape(-1, 2, 4).sum(-1), torch.ones(40000, 2)), "one class per categorical"
    assert torch.allclose(sample.mean(0), probs, atol=0.01)
    assert sample[:, [1, 6, 7]].sum() == 0, "classes of probability 0 are never drawn"


@pytest.mark.parametrize("unimix", [0.01, 0.0])
def test_unimix_draw_is_unimix_logits_then_a_straight_through_sample(unimix):
    """Imagination's one-pass draw: the logits of unimix_logits, the sample that
    straight_through_sample draws from them with the same uniforms, and the same gradients."""
    torch.manual_seed(3)
    raw = (torch.randn(64, 8 * 6) * 3).requires_grad_()
    weights = torch.randn(64, 8 * 6)
    torch.manual_seed(11)
    sample, index, logits = unimix_draw(raw, 6, unimix)
    ((sample * weights).sum() + logits.sum()).backward()
    grad, raw.grad = raw.grad.clone(), None
    torch.manual_seed(11)
    logits_two = unimix_logits(raw, 6, unimix)
    sample_two, index_two = straight_through_sample(logits_two, 6, with_index=True)
    ((sample_two * weights).sum() + logits_two.sum()).backward()
    torch.testing.assert_close(logits, logits_two)
    assert torch.equal(sample, sample_two) and torch.equal(index, index_two)
    torch.testing.assert_close(grad, raw.grad)
    assert torch.equal(sample.detach().reshape(64, 8, 6).argmax(-1) + torch.arange(8) * 6, index)


def test_gaussian_draw_is_its_parameters_and_a_reparameterised_sample():
    spec = DataSpec((3,), "float32", 2, False, (-1.0, -1.0), (1.0, 1.0))
    model = make_world_model("gaussian_rssm", spec, config_for("gaussian_rssm", "tiny"))
    raw = torch.randn(5, 2 * model.config.stoch)
    torch.manual_seed(4)
    stoch, index, params = model._draw(raw)
    torch.manual_seed(4)
    noise = model._noise((5,))
    size = model.config.stoch
    assert index is None and torch.equal(params, model._params_from_raw(raw))
    torch.testing.assert_close(stoch, params[:, :size] + params[:, size:] * noise)


def test_unimix_mixes_in_the_uniform_distribution():
    mixed = unimix_logits(torch.tensor([[50.0, 0.0]]), classes=2, unimix=0.01)
    assert torch.allclose(mixed.exp(), torch.tensor([[0.995, 0.005]]), atol=1e-6)


def test_softplus_min_std_and_gaussian_kl():
    std = std_from_raw(torch.tensor([0.0, 30.0, -30.0]), min_std=0.1)
    assert torch.allclose(std, torch.tensor([math.log(2.0) + 0.1, 30.1, 0.1]), atol=1e-5)
    # KL(N(1, 1) ‖ N(0, 2²)) = ln 2 + (1 + 1) / 8 − 1/2 = 0.443147, per dimension
    kl = gaussian_kl(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]),
                     torch.tensor([0.0, 0.0]), torch.tensor([2.0, 2.0]))
    assert kl.item() == pytest.approx(2 * 0.443147, abs=1e-5)


# ------------------------------------------------------------------ learning

def point_mass_batch(gen: torch.Generator, batch: int, steps: int, discrete: bool) -> SequenceBatch:
    """A 2-D point moved by its actions: x' = x + 0.45·a (continuous a ∈ [-1, 1]², or one of
    four unit moves). Episodes start at uniform positions in [-3, 3]²."""
    moves = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    if discrete:
        index = torch.randint(0, 4, (batch, steps), generator=gen)
        action, delta = F.one_hot(index, 4).float(), moves[index]
    else:
        action = torch.rand(batch, steps, 2, generator=gen) * 2 - 1
        delta = action
    position = (torch.rand(batch, 2, generator=gen) * 2 - 1) * 3.0
    observations = []
    for t in range(steps):
        observations.append(position)
        position = position + 0.45 * delta[:, t]
    obs = torch.stack(observations, 1)
    prev_action = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
    is_first = torch.zeros(batch, steps, dtype=torch.bool)
    is_first[:, 0] = True
    return SequenceBatch(obs=obs, prev_action=prev_action, action=action,
                         reward=torch.zeros(batch, steps), is_first=is_first,
                         is_terminal=torch.zeros(batch, steps, dtype=torch.bool),
                         action_mask=torch.ones(batch, steps, dtype=torch.bool))


@pytest.mark.parametrize("name,discrete,precision", [("rssm", True, "fp32"), ("gaussian_rssm", False, "fp32"),
                                                     ("dynamics", False, "fp32"), ("rssm", True, "bf16"),
                                                     pytest.param("gaussian_rssm", False, "bf16",
                                                                  marks=pytest.mark.slow)])
def test_learns_a_point_mass_and_beats_repeating_the_last_observation(name, discrete, precision):
    torch.manual_seed(0)
    spec = DataSpec((2,), "float32", action_dim=4 if discrete else 2, discrete=discrete)
    model = make_world_model(name, spec, config_for(name, "tiny", lr=3e-3))
    optimizer = torch.optim.Adam(model.parameters(), lr=model.config.lr)
    gen = torch.Generator().manual_seed(0)
    history = []  # the prediction terms (the KL may rise while the posterior learns)
    for _ in range(400):
        with autocast("cpu", precision):
            losses, _, _ = model.loss(point_mass_batch(gen, 32, 12, discrete))
        loss = total_loss(losses, model.loss_scales)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(sum(value.item() for key, value in losses.items() if key != "kl"))
    first, last = sum(history[:20]) / 20, sum(history[-20:]) / 20
    assert last < 0.2 * first, f"loss fell only from {first:.3f} to {last:.3f}"

    model.eval()
    test = point_mass_batch(torch.Generator().manual_seed(1), 64, 12, discrete)
    torch.manual_seed(1)
    with autocast("cpu", precision):
        predicted = model.open_loop(test, context=5, horizon=5)      # (64, 5, 2)
    assert predicted.dtype == torch.float32
    truth = test.obs[:, 5:10]
    repeat = test.obs[:, 4:5].expand_as(truth)
    model_error = (predicted - truth).pow(2).mean().item()
    repeat_error = (repeat - truth).pow(2).mean().item()
    assert model_error < 0.5 * repeat_error, (model_error, repeat_error)


@pytest.mark.parametrize("name", ["rssm", "gaussian_rssm"])
def test_continue_head_reads_h_alone_when_asked(name):
    """``continue_prob`` is P(continue) from the continue head, None without one; with
    ``continue_input='deter'`` it depends on h only (the stochastic part can change freely)."""
    plain, spec = build(name, "vector", True)
    batch = make_batch(spec)
    assert plain.continue_prob(plain.encode_sequence(batch)) is None
    for source in ("features", "deter"):
        model, _ = build(name, "vector", True, continue_head=True, continue_input=source)
        state = model.encode_sequence(batch)
        prob = model.continue_prob(state)
        assert prob.shape == (B, T) and ((prob > 0) & (prob < 1)).all()
        other = State(deter=state.deter, stoch=torch.roll(state.stoch, 1, 0),
                      **{k: v for k, v in state.tensors().items() if k not in ("deter", "stoch")})
        assert torch.equal(model.continue_prob(other), prob) == (source == "deter"), source
        losses, _, _ = model.loss(batch)
        assert "cont" in losses and torch.isfinite(losses["cont"])
