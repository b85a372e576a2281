"""MinAtar end to end: the env's observations and privileged state, the grid encoder/decoder and
the Bernoulli likelihood, the scripted experts against random play, any game through a user
policy, the deployed policy on the raw game's grids, and a tiny run through the command line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("minatar")

from cli.main import main as wmil_main  # noqa: E402
from wmil.envs import EnvConfig, make_env  # noqa: E402
from wmil.envs.minatar import game_state, grid_to_image, render_grid, restore_game  # noqa: E402
from wmil.errors import UserError  # noqa: E402
from wmil.nets import ConvEncoder  # noqa: E402
from wmil.nets.grid import GridDecoder, GridEncoder, image_decoder, image_encoder  # noqa: E402
from wmil.types import DataSpec  # noqa: E402
from wmil.world_models.likelihood import observation_nll, resolve_likelihood  # noqa: E402

GAMES = {"breakout": "MinAtar/Breakout-v1", "space_invaders": "MinAtar/SpaceInvaders-v1",
         "asterix": "MinAtar/Asterix-v1"}


# ------------------------------------------------------------------------------------ env


@pytest.mark.parametrize("env_id,channels,actions", [("MinAtar/Breakout-v1", 4, 3), ("MinAtar/SpaceInvaders-v1", 6, 4),
                                                     ("MinAtar/Asterix-v1", 4, 5), ("MinAtar/Seaquest-v1", 10, 6)])
def test_observations_are_channels_first_uint8_grids_of_the_game(env_id, channels, actions):
    env = make_env(EnvConfig(env_id, max_episode_steps=30, kwargs={"render_mode": "rgb_array"}))
    obs, info = env.reset(seed=3)
    assert env.observation_space.shape == (channels, 10, 10) and env.observation_space.dtype == np.uint8
    assert env.action_space.n == actions
    for _ in range(5):
        raw = env.unwrapped.game.state()                       # (10, 10, C) bool, the game's own
        assert obs.shape == (channels, 10, 10) and obs.dtype == np.uint8
        assert set(np.unique(obs)) <= {0, 255}
        np.testing.assert_array_equal(obs, np.transpose(raw, (2, 0, 1)).astype(np.uint8) * 255)
        frame = env.render()
        assert frame.shape == (160, 160, 3) and frame.dtype == np.uint8
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            break
    assert info["state"].dtype == np.float64 and info["state"].ndim == 1


def test_time_limit_and_seeded_episodes_repeat():
    def episode(seed):
        env = make_env(EnvConfig("MinAtar/Asterix-v1", max_episode_steps=25))
        obs, _ = env.reset(seed=seed)
        frames, truncated, terminated, t = [obs], False, False, 0
        while not (terminated or truncated):
            obs, _, terminated, truncated, _ = env.step(t % 5)
            frames.append(obs)
            t += 1
        return np.stack(frames), truncated

    a, truncated = episode(7)
    b, _ = episode(7)
    np.testing.assert_array_equal(a, b)
    assert len(a) <= 26 and (truncated or len(a) < 26)


@pytest.mark.parametrize("name", sorted(GAMES))
def test_privileged_state_restores_the_game(name):
    env = make_env(EnvConfig(GAMES[name]))
    _, info = env.reset(seed=1)
    for t in range(40):
        game = env.unwrapped.game.env
        restored = restore_game(name, info["state"])
        np.testing.assert_array_equal(game_state(restored), info["state"])
        np.testing.assert_array_equal(restored.state(), game.state())
        _, _, terminated, truncated, info = env.step(t % env.action_space.n)
        if terminated or truncated:
            break


def test_render_grid_colours_each_channel():
    image = np.zeros((3, 10, 10), np.uint8)
    image[0, 2, 3] = 255
    image[2, 9, 9] = 255
    rgb = render_grid(image, cell=8)
    assert rgb.shape == (80, 80, 3)
    assert (rgb[2 * 8 + 4, 3 * 8 + 4] != rgb[9 * 8 + 4, 9 * 8 + 4]).any()      # two channels, two colours
    assert (rgb[2 * 8 + 4, 3 * 8 + 4] > 0).any() and (rgb[5 * 8 + 4, 5 * 8 + 4] == 0).all()  # empty cell is black


def test_unknown_minatar_game_and_pixels_are_one_line_errors():
    with pytest.raises(UserError, match="unknown environment id 'MinAtar/Pong-v1'"):
        make_env(EnvConfig("MinAtar/Pong-v1"))
    with pytest.raises(UserError, match="leave pixels unset"):
        make_env(EnvConfig("MinAtar/Breakout-v1", pixels=64))


# ------------------------------------------------------------------------------------ nets


def test_grid_encoder_and_decoder_shapes():
    enc = GridEncoder((4, 10, 10), depth=8)
    x = torch.rand(2, 3, 4, 10, 10) - 0.5
    assert enc(x).shape == (2, 3, 2 * 8 * 5 * 5) == (2, 3, enc.out_dim)
    dec = GridDecoder(24, (4, 10, 10), depth=8)
    assert dec(torch.randn(2, 3, 24)).shape == (2, 3, 4, 10, 10)
    odd_enc, odd_dec = GridEncoder((2, 9, 7), depth=4), GridDecoder(5, (2, 9, 7), depth=4)   # odd sizes are cropped
    assert odd_enc(torch.zeros(6, 2, 9, 7)).shape == (6, 2 * 4 * 5 * 4)
    assert odd_dec(torch.zeros(6, 5)).shape == (6, 2, 9, 7)
    with pytest.raises(AssertionError, match="GridEncoder expects"):
        enc(torch.zeros(1, 4, 9, 10))


def test_image_nets_are_chosen_by_the_shape():
    assert isinstance(image_encoder((4, 10, 10), 8, "elu"), GridEncoder)
    assert isinstance(image_decoder(16, (6, 10, 10), 8, "elu"), GridDecoder)
    assert isinstance(image_encoder((3, 64, 64), 4, "elu"), ConvEncoder)
    with pytest.raises(UserError, match="64×64 images .* or small grids up to 32×32"):
        image_encoder((3, 48, 48), 4, "elu")


def test_bernoulli_likelihood_by_hand():
    raw = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    target = torch.tensor([[0.5, -0.5], [0.5, 0.5]])        # cells on, off, on, on
    nll, prediction = observation_nll(raw, target, "bernoulli")
    expected = [[math.log(2), math.log(1 + math.e ** 2)], [math.log(1 + math.e), math.log(1 + math.e ** -3)]]
    assert torch.allclose(nll, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(prediction, torch.sigmoid(raw) - 0.5)
    nll_g, prediction_g = observation_nll(raw, target, "gaussian")
    assert torch.allclose(nll_g, 0.5 * (raw - target) ** 2) and torch.equal(prediction_g, raw)


def test_bernoulli_likelihood_needs_images():
    grid = DataSpec((4, 10, 10), "uint8", 3, True)
    assert resolve_likelihood("bernoulli", grid) == "bernoulli" and resolve_likelihood("gaussian", grid) == "gaussian"
    with pytest.raises(UserError, match="needs image observations"):
        resolve_likelihood("bernoulli", DataSpec((4,), "float32", 2, True))


@pytest.mark.parametrize("model", ["rssm", "gaussian_rssm"])
def test_recurrent_models_on_grids_with_a_bernoulli_likelihood_decode_probabilities_and_learn(model):
    from wmil.types import SequenceBatch
    from wmil.world_models.base import total_loss
    from wmil.world_models.registry import config_for, make_world_model

    torch.manual_seed(0)
    spec = DataSpec((4, 10, 10), "uint8", 3, True)
    wm = make_world_model(model, spec, config_for(model, "tiny", obs_likelihood="bernoulli"))
    assert isinstance(wm.encoder, GridEncoder) and isinstance(wm.decoder, GridDecoder) and wm.likelihood == "bernoulli"
    assert make_world_model(model, spec, config_for(model, "tiny")).likelihood == "gaussian"   # the default
    B, T = 4, 6
    obs = (torch.rand(B, T, 4, 10, 10) < 0.1).to(torch.uint8) * 255
    obs[:, :, 0] = 0                                           # channel 0 always off, channel 1 always on
    obs[:, :, 1] = 255
    actions = torch.nn.functional.one_hot(torch.randint(0, 3, (B, T)), 3).float()
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    batch = SequenceBatch(obs, actions, actions, torch.zeros(B, T), is_first, torch.zeros(B, T, dtype=torch.bool),
                          torch.ones(B, T, dtype=torch.bool))
    opt = torch.optim.Adam(wm.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        losses, metrics, posterior = wm.loss(batch)
        first = first if first is not None else float(losses["obs"].detach())
        opt.zero_grad()
        total_loss(losses, wm.loss_scales).backward()
        opt.step()
    assert float(losses["obs"].detach()) < 0.5 * first
    decoded = wm.decode(wm.features(posterior))
    assert decoded.shape == (B, T, 4, 10, 10) and decoded.min() >= -0.5 and decoded.max() <= 0.5
    decoded = decoded.detach()
    assert float(decoded[:, :, 1].mean()) > 0.3 and float(decoded[:, :, 0].mean()) < -0.3


# ------------------------------------------------------------------------------------ experts


def _play(env_id, policy, episodes, max_steps):
    from wmil.data.experts import make_expert

    env = make_env(EnvConfig(env_id, max_episode_steps=max_steps))
    returns = []
    for ep in range(episodes):
        _, info = env.reset(seed=100 + ep)
        env.action_space.seed(ep)
        expert = make_expert(env_id) if policy == "expert" else None
        if expert is not None:
            expert.reset(np.random.default_rng(ep))
        total, done = 0.0, False
        while not done:
            action = expert.act(info["state"]) if expert else env.action_space.sample()
            assert env.action_space.contains(action)
            _, reward, terminated, truncated, info = env.step(action)
            total += reward
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


@pytest.mark.parametrize("name,steps,margin", [("breakout", 150, 8.0), ("space_invaders", 150, 8.0),
                                               ("asterix", 300, 8.0)])
def test_experts_beat_random_play_clearly(name, steps, margin):
    # Random play scores ~0.5 (Breakout, Asterix) and ~5 (SpaceInvaders) over a whole episode;
    # the experts score a point every 10-15 steps (benchmarks/results/minatar-experts.md), Asterix
    # less at first (one entity spawns every 10 steps, a third of them gold).
    expert = _play(GAMES[name], "expert", 3, steps)
    random = _play(GAMES[name], "random", 3, steps)
    assert expert >= random + margin, (expert, random)


# ------------------------------------------------------------------------------------ CLI


def test_any_minatar_game_records_through_a_user_policy(tmp_path, monkeypatch):
    (tmp_path / "my_freeway_policy.py").write_text(
        "import numpy as np\n"
        "def act(obs):\n"
        "    assert obs.shape == (7, 10, 10) and obs.dtype == np.uint8\n"
        "    return 1  # always 'up'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert wmil_main(["build-dataset", "--name", "minatar-freeway/user-v0", "--env", "MinAtar/Freeway-v1",
                      "--policy", "my_freeway_policy:act", "--episodes", "2", "--max-episode-steps", "60",
                      "--ref-episodes", "0", "--quiet"]) == 0
    from wmil.data import load

    ds = load("minatar-freeway/user-v0")
    ep = ds.episode(0)
    assert ds.spec.obs_shape == (7, 10, 10) and ds.spec.obs_dtype == "uint8"
    assert ep.observations.shape == (61, 7, 10, 10) and set(np.unique(ep.observations)) <= {0, 255}
    assert (ep.actions == 1).all() and ep.rewards.sum() > 0    # the chicken crosses the road going up


def test_tiny_minatar_run_through_the_command_line(tmp_path, capsys):
    """Record, train a world model with no flag but the budget, DITTO and BC, evaluate with videos;
    the deployed policies take the raw game's bool grids too."""
    runs = tmp_path / "runs"
    common = ["--env", "MinAtar/Breakout-v1", "--max-episode-steps", "40", "--quiet"]
    assert wmil_main(["build-dataset", "--name", "mini-breakout/world-v0", "--policy", "expert", "--epsilon", "0,0.5,1",
                      "--episodes", "6", "--ref-episodes", "2", *common]) == 0
    assert wmil_main(["build-dataset", "--name", "mini-breakout/expert-v0", "--policy", "expert", "--episodes", "3",
                      "--seed", "10000", "--ref-episodes", "2", *common]) == 0
    assert wmil_main(["train-model", "--dataset", "mini-breakout/world-v0", "--preset", "tiny", "--steps", "3",
                      "--out", str(runs / "wm"), "--quiet"]) == 0
    from wmil.train.world_model import load_world_model

    wm = load_world_model(runs / "wm")
    assert isinstance(wm.encoder, GridEncoder) and wm.likelihood == "gaussian"
    assert wmil_main(["evaluate-model", str(runs / "wm"), "--dataset", "mini-breakout/expert-v0", "--batches", "1",
                      "--video"]) == 0
    printed = capsys.readouterr().out
    assert f"video: {runs / 'wm' / 'open_loop.gif'}" in printed and "channel 1:" in printed
    import json

    report = json.loads((runs / "wm" / "open_loop.json").read_text())
    assert report["start_recall/episodes"] == 3
    assert all(0 <= report[f"start_recall/c{c}_t{k}"] <= 1 for c in (0, 3) for k in (0, 20))  # paddle, bricks
    from PIL import Image

    with Image.open(runs / "wm" / "open_loop.gif") as gif:   # 4 windows (rows) of real | model, 25 steps
        assert gif.n_frames >= 2 and gif.size == (160 + 8 + 160, 4 * 166 + 3 * 8)
        gif.seek(gif.n_frames - 1)
        gif.convert("RGB").save(runs / "last_frame.png")
    assert wmil_main(["imagine", "--algo", "ditto", "--model", str(runs / "wm"), "--expert", "mini-breakout/expert-v0",
                      "--preset", "tiny", "--steps", "3", "--out", str(runs / "ditto"), "--quiet"]) == 0
    assert wmil_main(["imagine", "--algo", "bc", "--expert", "mini-breakout/expert-v0", "--preset", "tiny",
                      "--steps", "3", "--out", str(runs / "bc"), "--quiet"]) == 0
    assert wmil_main(["evaluate", str(runs / "ditto"), "--episodes", "2", "--video", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "normalized_score" in printed and "episode_0.gif" in printed and "at 10 fps" in printed

    with Image.open(runs / "ditto" / "videos" / "episode_0.gif") as gif:
        assert gif.size == (160, 160)                       # the 10×10 grid drawn 16 pixels a cell

    from wmil.train.policy import load_policy

    env = make_env(EnvConfig("MinAtar/Breakout-v1"))
    obs, _ = env.reset(seed=0)
    raw = env.unwrapped.game.state()
    np.testing.assert_array_equal(grid_to_image(raw), obs)
    assert isinstance(load_policy(runs / "bc").net.encoder, GridEncoder)   # BC on the world models' grid nets
    for run in ("ditto", "bc"):
        a, b = load_policy(runs / run), load_policy(runs / run)
        a.reset(), b.reset()
        torch.manual_seed(0)
        from_raw = [a.act(raw, deterministic=False) for _ in range(3)]
        torch.manual_seed(0)
        from_obs = [b.act(obs, deterministic=False) for _ in range(3)]
        assert from_raw == from_obs


class _Echo:
    """A stand-in world model whose posterior is the observation itself and whose decoder shows
    it, except channel ``blind`` during the first ``late`` steps after an episode starts."""

    def __init__(self, blind: int, late: int):
        self.blind, self.late = blind, late

    def parameters(self):
        return iter([torch.zeros(1)])

    def observe(self, obs, prev_action, is_first):
        return obs.float() / 255 - 0.5, None

    def features(self, state, mode):
        return state

    def decode(self, features):
        out = features.clone()
        out[:, :self.late, self.blind] = -0.5
        return out


def test_start_recall_counts_the_cells_the_filter_shows_after_an_episode_starts():
    from types import SimpleNamespace

    from wmil.eval.world_model import start_recall

    rng = np.random.default_rng(0)
    lengths = [25, 10, 30]                     # the 10-step episode is too short for k = 20
    obs = (rng.random((sum(lengths), 3, 10, 10)) < 0.2).astype(np.uint8) * 255
    offsets = np.cumsum([0] + lengths[:-1])
    is_first = np.zeros(len(obs), bool)
    is_first[offsets] = True
    view = SimpleNamespace(aligned=SimpleNamespace(obs=obs, prev_action=np.zeros((len(obs), 3), np.float32),
                                                   is_first=is_first, offsets=offsets, n_obs=np.array(lengths)))
    report = start_recall(_Echo(blind=1, late=3), [view])
    assert report["start_recall/episodes"] == 2
    for k in (0, 1, 2):
        assert report[f"start_recall/c1_t{k}"] == 0.0 and report[f"start_recall/c0_t{k}"] == 1.0
    assert all(report[f"start_recall/c{c}_t{k}"] == 1.0 for c in range(3) for k in (5, 10, 20))


@pytest.mark.parametrize("channels", [4, 6])
def test_open_loop_strip_draws_grids_of_any_channel_count(tmp_path, channels):
    """The strip of ``evaluate-model`` draws object-channel grids one colour per channel: a
    6-channel grid (SpaceInvaders) was handed to PIL as a 6-band image and failed, and a
    4-channel one (Breakout, Asterix) came out as RGBA."""
    from types import SimpleNamespace

    from PIL import Image

    from wmil.envs.minatar import PALETTE
    from wmil.eval.world_model import save_strip

    obs = torch.zeros(1, 20, channels, 10, 10, dtype=torch.uint8)
    obs[0, :, channels - 1, 3, 7] = 255                                 # the last channel's object
    model = SimpleNamespace(open_loop=lambda batch, context, horizon: batch.obs[:, context:context + horizon]
                            .float() / 255 - 0.5)
    path = save_strip(model, SimpleNamespace(obs=obs), 5, tmp_path / "strip.png")
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (15 * 80, 2 * 80)     # 15 frames, 8 pixels a cell
        pixels = np.asarray(image)
    for row in (0, 1):                                                  # truth, then the model
        np.testing.assert_array_equal(pixels[row * 80 + 3 * 8 + 4, 7 * 8 + 4], PALETTE[(channels - 1) % len(PALETTE)])
        assert pixels[row * 80 + 4, 4].max() <= 40                      # an empty cell stays dark


def test_a_bernoulli_decoder_starts_at_the_datas_base_rate(tmp_path, monkeypatch):
    """A fresh Bernoulli world model's output bias is the log-odds of each channel's share of 'on'
    cells in the training data (both image decoders); a Gaussian model, or a resumed run, is left
    as it is."""
    import gymnasium as gym

    from wmil.data.storage import DatasetWriter, Episode
    from wmil.nets.conv import ConvDecoder
    from wmil.train.world_model import train_world_model
    from wmil.world_models.registry import config_for, make_world_model
    from wmil.world_models.rssm import RSSM

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    rng = np.random.default_rng(0)
    space = gym.spaces.Box(0, 255, (3, 10, 10), np.uint8)
    with DatasetWriter("rates/world-v0", space, gym.spaces.Discrete(3)) as writer:
        for e, T in enumerate([20, 30, 25]):
            obs = np.zeros((T + 1, 3, 10, 10), np.uint8)
            obs[:, 1] = 255                                                   # always on
            obs[:, 2] = (rng.random((T + 1, 10, 10)) < 0.05) * 255            # sparse
            terms = np.zeros(T, bool)
            terms[-1] = True
            writer.add(Episode(obs, rng.integers(0, 3, T), np.zeros(T), terms, np.zeros(T, bool), seed=e))
    seen = []
    monkeypatch.setattr(RSSM, "set_pixel_rates", lambda self, share: seen.append(np.asarray(share)))
    common = dict(preset="tiny", steps=2, progress=False, device="cpu",
                  overrides={"batch_size": "2", "seq_len": "8", "eval_every": "2", "checkpoint_every": "2",
                             "log_every": "2", "open_loop_context": "3", "eval_batches": "1"})
    train_world_model("rates/world-v0", model="rssm", out=tmp_path / "g", **common)
    assert seen == []                                                          # Gaussian: left as it is
    bern = {**common["overrides"], "obs_likelihood": "bernoulli"}
    train_world_model("rates/world-v0", model="rssm", out=tmp_path / "b", **{**common, "overrides": bern})
    assert len(seen) == 1
    from wmil.data import load

    train = load("rates/world-v0").split(0.1, seed=0)[0]                       # the trainer's training split
    cells = np.concatenate([train.episode(i).observations for i in range(len(train))]) > 127
    np.testing.assert_allclose(seen[0], cells.mean((0, 2, 3)))
    assert seen[0][0] == 0 and seen[0][1] == 1 and 0.02 < seen[0][2] < 0.08
    train_world_model("rates/world-v0", model="rssm", out=tmp_path / "b", **{**common, "steps": 4, "overrides": bern})
    assert len(seen) == 1                                                      # a resume keeps its parameters
    monkeypatch.undo()

    share = np.array([0.0, 1.0, 0.05])                                         # clamped to [1e-3, 1 - 1e-3]
    expected = torch.tensor([math.log(1e-3 / (1 - 1e-3)), math.log((1 - 1e-3) / 1e-3), math.log(0.05 / 0.95)])
    for shape in [(3, 10, 10), (3, 64, 64)]:
        spec = DataSpec(shape, "uint8", 3, True)
        model = make_world_model("rssm", spec, config_for("rssm", "tiny", obs_likelihood="bernoulli"))
        assert isinstance(model.decoder, GridDecoder if shape[1] == 10 else ConvDecoder)
        model.set_pixel_rates(share)
        torch.testing.assert_close(model.decoder.output_bias.detach(), expected)
        gaussian = make_world_model("rssm", spec, config_for("rssm", "tiny"))
        before = gaussian.decoder.output_bias.detach().clone()
        gaussian.set_pixel_rates(share)
        torch.testing.assert_close(gaussian.decoder.output_bias.detach(), before)
