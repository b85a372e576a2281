"""evaluate_policy on any env (object, id + kwargs, wrappers, vector envs with every autoreset
mode) and videos: every step at the env's frame rate, GIF and MP4, rendered frames."""

from __future__ import annotations

import json

import gymnasium as gym
import torch
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from cli.main import main as wmil_main
from wmil.train.policy import load_policy, train_policy
from wmil.data.build import BuildConfig, build_dataset
from wmil.errors import UserError
from wmil.eval.evaluate import evaluate_policy

BC = {"log_every": "1", "eval_every": "2", "checkpoint_every": "2"}


@pytest.fixture
def cartpole_bc(tmp_path, minari_root):
    """A BC policy for CartPole (2 updates: it only has to act)."""
    expert = build_dataset(BuildConfig(name="ev/cp-v0", env="CartPole-v1", policy="expert", episodes=2,
                                       max_episode_steps=30, ref_episodes=0), progress=False)
    out = tmp_path / "bc"
    train_policy("bc", None, expert, out=out, preset="tiny", steps=2, progress=False, device="cpu", overrides=BC)
    return out


def test_gif_has_every_step_at_the_env_frame_rate(cartpole_bc):
    from PIL import Image

    report = evaluate_policy(cartpole_bc, episodes=2, video=True, video_episodes=2, progress=False)
    assert len(report["videos"]) == 2 and report["video_fps"] == 50  # CartPole's render_fps
    assert report["video_frame_ms"] == 20
    # T steps → T+1 frames: the reset frame and one after every step.
    assert report["video_frames"][0] == report["returns"][0] + 1  # CartPole: reward 1 per step
    for path, frames in zip(report["videos"], report["video_frames"]):
        with Image.open(path) as gif:
            durations = []
            for i in range(gif.n_frames):
                gif.seek(i)
                durations.append(gif.info["duration"])
            size = gif.size
        # GIF writers merge identical consecutive frames into one longer frame: the total time is
        # exact either way, 20 ms (1/50 s) per recorded frame.
        assert sum(durations) == 20 * frames and set(durations) <= {20 * k for k in range(1, frames + 1)}
        assert size == (600, 400)  # the env's rendered frame, not a downscaled observation


def test_mp4_is_readable_with_every_frame(cartpole_bc, capsys):
    import imageio.v2 as imageio

    assert wmil_main(["evaluate", str(cartpole_bc), "--episodes", "1", "--video", "--video-format", "mp4",
                      "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((cartpole_bc / "evaluation.json").read_text())
    path = report["videos"][0]
    assert path.endswith("episode_0.mp4") and f"video: {path}  ({report['video_frames'][0]} frames at 50 fps)" in printed
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        frames = [frame for frame in reader]
        assert reader.get_meta_data()["fps"] == 50
    finally:
        reader.close()
    assert len(frames) == report["length_mean"] + 1 == report["video_frames"][0]
    assert frames[0].shape == (400, 600, 3)


def test_pixel_env_videos_record_the_rendered_frames(tmp_path, minari_root):
    world = build_dataset(BuildConfig(name="ev/pix-v0", env="CartPole-v1", policy="expert", episodes=1,
                                      pixels=16, grayscale=True, max_episode_steps=8, ref_episodes=0), progress=False)
    out = tmp_path / "pix-bc"
    train_policy("bc", None, world, out=out, preset="tiny", steps=2, progress=False, device="cpu", overrides=BC)
    report = evaluate_policy(out, episodes=1, video=True, progress=False, offline=False)
    from PIL import Image

    with Image.open(report["videos"][0]) as gif:
        assert gif.size == (600, 400)  # not the 16×16 observation
    assert report["video_frames"] == [report["length_mean"] + 1]


def test_env_object_id_kwargs_and_wrappers(cartpole_bc):
    policy = load_policy(cartpole_bc)
    by_id = evaluate_policy(policy, env_id="CartPole-v1", episodes=3, progress=False, offline=False)
    # The id path keeps the expert data's settings (its 30-step limit); the object is used as given.
    by_object = evaluate_policy(policy, env=gym.make("CartPole-v1", max_episode_steps=30), episodes=3,
                                progress=False, offline=False)
    assert by_id["returns"] == by_object["returns"] and max(by_id["returns"]) > 4  # same dynamics and seeds
    assert by_id["run"] is None and "report_path" not in by_id  # a loaded policy: nothing written
    # kwargs reach gym.make: the Sutton-Barto reward is 0 per step and -1 at the failure
    sutton = evaluate_policy(policy, env_id="CartPole-v1", env_kwargs={"sutton_barto_reward": True}, episodes=3,
                             progress=False, offline=False)
    assert all(r in (0.0, -1.0) for r in sutton["returns"]) and sutton["length_mean"] == by_id["length_mean"]
    short = evaluate_policy(policy, env_id="CartPole-v1", wrappers=[lambda e: gym.wrappers.TimeLimit(e, 4)],
                            episodes=3, progress=False, offline=False)
    assert short["length_mean"] == 4
    with pytest.raises(UserError, match="not both"):
        evaluate_policy(policy, env=gym.make("CartPole-v1"), env_id="CartPole-v1", progress=False)
    with pytest.raises(UserError, match="n_envs=2 needs copies"):
        evaluate_policy(policy, env=gym.make("CartPole-v1"), n_envs=2, progress=False)
    with pytest.raises(UserError, match="expects obs"):
        evaluate_policy(policy, env_id="Pendulum-v1", episodes=1, progress=False)


def test_n_envs_gives_the_same_episodes_as_one_env(cartpole_bc):
    one = evaluate_policy(cartpole_bc, episodes=5, progress=False, offline=False, out=cartpole_bc / "one")
    three = evaluate_policy(cartpole_bc, episodes=5, n_envs=3, progress=False, offline=False,
                            out=cartpole_bc / "three")
    assert three["n_envs"] == 3 and one["n_envs"] == 1
    assert three["returns"] == one["returns"]  # episode i has seed + i whichever copy runs it


class Countdown(gym.Env):
    """Episodes of a random length L ∈ [1, 5] (from the env's seeded generator): reward 1 per
    step plus 10 on the last one, so a reward counted from a reset step or lost at the end shows."""

    metadata = {"render_modes": [], "render_fps": 10}

    def __init__(self):
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.length, self.t = int(self.np_random.integers(1, 6)), 0
        return np.array([0.0, 0.0, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t >= self.length
        return np.array([0.0, float(self.t), 0.0], np.float32), 1.0 + 10.0 * end, end, False, {}


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
def test_user_vector_envs_count_every_episode_once(tmp_path, write_dataset, mode):
    expert = write_dataset("ev/count-v0", [6, 5])
    out = tmp_path / "count-bc"
    train_policy("bc", None, expert, out=out, preset="tiny", steps=2, progress=False, device="cpu", overrides=BC)
    envs = SyncVectorEnv([Countdown] * 3, autoreset_mode=mode)
    report = evaluate_policy(load_policy(out), env=envs, episodes=11, progress=False, offline=False)
    lengths = np.array(report["returns"]) - 10.0
    assert report["episodes"] == 11 and len(report["returns"]) == 11
    assert np.all((lengths >= 1) & (lengths <= 5)) and lengths.mean() == report["length_mean"]
    envs.close()


def test_evaluating_a_run_logs_real_scores_for_plots_and_tensorboard(cartpole_bc):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    report = evaluate_policy(cartpole_bc, episodes=2, progress=False)
    rows = [json.loads(line) for line in (cartpole_bc / "evaluations.jsonl").read_text().splitlines()]
    assert rows == [{"step": 2, "real/return_mean": report["return_mean"], "real/length_mean": report["length_mean"],
                     "episodes": 2, "env": "CartPole-v1"}]
    events = EventAccumulator(str(cartpole_bc))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("real/return_mean")] == [(2, pytest.approx(report["return_mean"]))]


def test_gif_frame_durations_round_to_gif_steps():
    from wmil.eval.video import frame_ms

    assert [frame_ms(fps, "gif") for fps in (50, 30, 15, 7.5, 200)] == [20, 30, 70, 130, 10]
    assert frame_ms(15, "mp4") == pytest.approx(1000 / 15)


def test_ale_videos_play_at_the_agent_step_rate():
    pytest.importorskip("ale_py")
    from wmil.envs import EnvConfig, make_env

    env = make_env(EnvConfig("ALE/Pong-v5"))
    try:
        assert env.metadata["render_fps"] == 15  # 60 emulator frames/s, one agent step per 4 frames
    finally:
        env.close()


@pytest.mark.parametrize("model", ["rssm", "gaussian_rssm"])
def test_a_batched_latent_policy_acts_as_one_policy_per_copy(synthetic_worlds, model, monkeypatch):
    """act_batch over N copies (one state row each, a copy restarting mid-stream) gives the
    actions N separate policies give through act, when the latent noise is the same for both
    (fixed here: the posterior samples z, and a batch draws its noise in another order)."""
    import copy

    from wmil.config import ActorConfig
    from wmil.nets import ActionHead
    from wmil.policy import LatentPolicy

    _, _, world_model = synthetic_worlds(model, True)
    size = world_model._noise((1,)).shape[-1]
    monkeypatch.setattr(world_model, "_noise", lambda shape: torch.zeros(*shape, size))
    torch.manual_seed(0)
    actor = ActionHead(world_model.feature_dim, world_model.spec, ActorConfig(layers=1, units=16))
    with torch.no_grad():  # sharp preferences, so the actions vary with the state
        for parameter in actor.parameters():
            parameter.mul_(30)
    policy = LatentPolicy(world_model, actor, world_model.spec)
    singles = [copy.deepcopy(policy) for _ in range(3)]
    for single in singles:
        single.reset()
    rng = np.random.default_rng(0)
    batched, separate = [], []
    for step in range(8):
        obs = rng.normal(size=(3, *world_model.spec.obs_shape)).astype(np.float32) * 3
        first = [step == 0, step == 0 or step == 4, step == 0]
        if step == 4:
            singles[1].reset()
        batched.append(policy.act_batch(obs, first))
        separate.append([single.act(o) for single, o in zip(singles, obs)])
    assert batched == separate
    features = world_model.features(policy.state)                                   # (3, F)
    for k, single in enumerate(singles):
        torch.testing.assert_close(features[k], world_model.features(single.state)[0])
    assert (features[0] - features[1]).abs().max() > 1e-3, "the state must depend on the copy's observations"
    with pytest.raises(ValueError, match="2 first-step flags for 3"):
        policy.act_batch(obs, [True, False])


def test_predict_carries_the_state_in_and_out_as_stable_baselines3_does(synthetic_worlds, monkeypatch):
    import copy

    from wmil.config import ActorConfig
    from wmil.nets import ActionHead
    from wmil.policy import LatentPolicy

    _, _, world_model = synthetic_worlds("rssm", True)
    size = world_model._noise((1,)).shape[-1]
    monkeypatch.setattr(world_model, "_noise", lambda shape: torch.zeros(*shape, size))
    torch.manual_seed(0)
    actor = ActionHead(world_model.feature_dim, world_model.spec, ActorConfig(layers=1, units=16))
    kept, passed = LatentPolicy(world_model, actor, world_model.spec), LatentPolicy(world_model, actor, world_model.spec)
    rng = np.random.default_rng(1)
    state = None
    for step in range(5):
        obs = rng.normal(size=(2, *world_model.spec.obs_shape)).astype(np.float32) * 3
        starts = np.array([step == 0, step == 3])
        expected = kept.act_batch(obs, starts, deterministic=True)
        passed.set_memory(None)  # predict must not rely on what the policy object holds
        actions, state = passed.predict(obs, state, episode_start=starts, deterministic=True)
        assert actions.tolist() == expected and state is not None
    torch.testing.assert_close(world_model.features(state[0]), world_model.features(kept.state))
    single, single_state = copy.deepcopy(passed).predict(obs[0])  # one observation, a fresh episode
    assert np.ndim(single) == 0 and single_state is not None
