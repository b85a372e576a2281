"""The dataset layer: recording, storage, loading, samplers and their time alignment."""


import minari
import numpy as np
import pytest
import torch

from wmil.data import load
from wmil.data.build import BuildConfig, build_dataset, load_recipe
from wmil.data.collect import Part
from wmil.errors import UserError


def build(name="test/cp-v0", env="CartPole-v1", **kw):
    kw.setdefault("ref_episodes", 0)
    overwrite = kw.pop("overwrite", False)
    return build_dataset(BuildConfig(name=name, env=env, **kw), overwrite=overwrite, progress=False)


# ---- recording ----------------------------------------------------------------------------------
def test_build_random_cartpole_is_a_minari_dataset(minari_root):
    ds = build(episodes=5, policy="random")
    assert len(ds) == 5
    m = minari.load_dataset("test/cp-v0")
    assert m.total_episodes == 5 and m.total_steps == ds.total_steps
    for episode in m.iterate_episodes():
        assert len(episode.observations) == len(episode.actions) + 1
        assert episode.terminations[-1] or episode.truncations[-1]
    assert (minari_root / "test" / "cp-v0" / "data" / "main_data.hdf5").is_file()
    assert not [p for p in minari_root.iterdir() if p.name.startswith(".wmil")]


def test_same_seed_same_dataset_for_any_worker_count():
    a = build("test/a-v0", episodes=6, policy="random", epsilon=[0.0], seed=3)
    b = build("test/b-v0", episodes=6, policy="random", seed=3, workers=3)
    c = build("test/c-v0", episodes=6, policy="random", seed=4)
    for i in range(6):
        ea, eb = a.episode(i), b.episode(i)
        np.testing.assert_array_equal(ea.observations, eb.observations)
        np.testing.assert_array_equal(ea.actions, eb.actions)
        assert ea.seed == eb.seed == 3 + i
    assert not all(np.array_equal(a.episode(i).actions, c.episode(i).actions) for i in range(6))


def test_epsilon_mixture_and_reference_scores():
    ds = build(episodes=8, policy="expert", epsilon=[0.0, 1.0], ref_episodes=2)
    parts = ds.wmil_metadata["parts"]
    assert [(p["epsilon"], p["episodes"]) for p in parts] == [(0.0, 4), (1.0, 4)]
    returns = ds.returns()
    assert returns[:4].min() > returns[4:].max()  # expert episodes beat uniformly random ones
    assert ds.ref_max_score > ds.ref_min_score
    assert ds.summary()["ref_max_score"] == ds.ref_max_score


def test_continuous_env_with_noise():
    ds = build("test/pend-v0", env="Pendulum-v1", episodes=2, policy="expert", epsilon=[0.5], max_episode_steps=30)
    e = ds.episode(0)
    assert e.actions.shape == (30, 1) and e.actions.dtype == np.float32
    assert np.abs(e.actions).max() <= 2.0
    assert ds.spec.discrete is False and ds.spec.action_low == (-2.0,)


def test_pixel_observations_are_uint8_channels_first_and_lossless():
    ds = build("test/pix-v0", episodes=2, policy="random", pixels=32, max_episode_steps=12)
    e = ds.episode(0)
    assert e.observations.dtype == np.uint8 and e.observations.shape[1:] == (3, 32, 32)
    raw = ds.file["episode_0/observations"]
    assert raw.dtype == np.uint8 and raw.shape == e.observations.shape  # stored raw, not JPEG bytes
    m = minari.load_dataset("test/pix-v0")
    np.testing.assert_array_equal(next(m.iterate_episodes()).observations, e.observations)
    grey = build("test/grey-v0", episodes=1, policy="random", pixels=32, grayscale=True, max_episode_steps=5)
    assert grey.episode(0).observations.shape[1:] == (1, 32, 32)


def test_recipe_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: test/recipe-v0\nenv: CartPole-v1\nparts:\n  - {policy: expert, epsilon: 0.0, episodes: 2}\n"
                      "  - {policy: random, episodes: 1}\nref_episodes: 0\n")
    config = load_recipe(recipe, seed=5)
    assert config.seed == 5 and config.resolved_parts() == [Part("expert", 0.0, 2), Part("random", 0.0, 1)]
    ds = build_dataset(config, progress=False)
    assert len(ds) == 3 and ds.episode(0).length == 500
    (tmp_path / "bad.yaml").write_text("name: x/y-v0\nenv: CartPole-v1\nepisodez: 3\n")
    with pytest.raises(UserError, match="unknown field.*episodez"):
        load_recipe(tmp_path / "bad.yaml")


def test_shipped_recipes_are_valid():
    from pathlib import Path

    recipes = sorted((Path(__file__).parent.parent / "datasets").glob("*.yaml"))
    assert recipes, "datasets/ must ship recipes"
    for path in recipes:
        config = load_recipe(path)
        assert sum(p.episodes for p in config.resolved_parts()) > 0


def test_user_policies(tmp_path, monkeypatch):
    (tmp_path / "my_policy.py").write_text("def always_left(obs):\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = build(episodes=2, policy="my_policy:always_left")
    assert all((ds.episode(i).actions == 0).all() for i in range(2))

    class Right(torch.nn.Module):
        def forward(self, obs):
            return torch.stack([obs[:, 0] * 0, obs[:, 0] * 0 + 1], 1)  # logits favour action 1

    path = tmp_path / "right.pt"
    torch.jit.save(torch.jit.script(Right()), str(path))
    ds = build("test/ts-v0", episodes=2, policy=str(path))
    assert all((ds.episode(i).actions == 1).all() for i in range(2))

    class Left(torch.nn.Module):
        def forward(self, obs):
            return torch.stack([obs[:, 0] * 0 + 1, obs[:, 0] * 0], 1)  # logits favour action 0

    path = tmp_path / "left.pt2"
    torch.export.save(torch.export.export(Left(), (torch.zeros(1, 4),)), str(path))
    ds = build("test/export-v0", episodes=2, policy=str(path))
    assert all((ds.episode(i).actions == 0).all() for i in range(2))
    (tmp_path / "bad.pt2").write_bytes(b"not a program")
    with pytest.raises(UserError, match="bad.pt2: not a torch.export program"):
        build("test/bad-v0", episodes=1, policy=str(tmp_path / "bad.pt2"))


def test_flushes_while_recording_and_leaves_nothing_on_failure(minari_root, monkeypatch):
    import wmil.data.storage as storage

    monkeypatch.setattr(storage, "FLUSH_BYTES", 1)  # flush after every episode
    calls = []
    original = storage.DatasetWriter.flush

    def counting_flush(self):
        calls.append(len(self._pending))
        original(self)

    monkeypatch.setattr(storage.DatasetWriter, "flush", counting_flush)
    build(episodes=4, policy="random")
    assert calls.count(1) >= 4  # episodes went to disk one by one

    import wmil.data.collect as collect

    def failing_collect(*args, **kwargs):
        yield from list(original_collect(*args, **kwargs))[:2]
        raise RuntimeError("simulated crash while recording")

    original_collect = collect.collect
    monkeypatch.setattr("wmil.data.build.collect", failing_collect)
    with pytest.raises(RuntimeError):
        build("test/crash-v0", episodes=4, policy="random")
    assert not (minari_root / "test" / "crash-v0").exists()
    assert not [p for p in minari_root.iterdir() if p.name.startswith(".wmil")]


# ---- samplers and alignment ---------------------------------------------------------------------
def test_sequence_windows_follow_the_alignment(write_dataset):
    ds = write_dataset("test/syn-v0", [5, 9, 2])
    batch = ds.sequences(batch_size=64, length=4, seed=0).sample()
    assert batch.obs.shape == (64, 4, 3) and batch.action.shape == (64, 4, 3)
    assert batch.mask is None
    episode, t = batch.obs[..., 0], batch.obs[..., 1]
    assert (episode == episode[:, :1]).all(), "a window crossed an episode boundary"
    assert (t[:, 1:] - t[:, :-1] == 1).all()
    assert not (episode == 2).any(), "episode 2 (3 observations) is shorter than the window"
    # prev_action[t] is the action that led to obs[t]; action[t] is taken at obs[t].
    torch.testing.assert_close(batch.prev_action[:, 1:], batch.action[:, :-1])
    assert torch.equal(batch.is_first, t == 0)
    assert (batch.prev_action[batch.is_first] == 0).all() and (batch.reward[batch.is_first] == 0).all()
    expected_action = torch.nn.functional.one_hot((t % 3).long(), 3).float()
    last = t == torch.tensor([5.0, 9.0, 2.0])[episode.long()]
    assert torch.equal(batch.action_mask, ~last)
    assert torch.equal(batch.action[~last], expected_action[~last]) and (batch.action[last] == 0).all()
    # reward[t] is the reward of the step that arrived at obs[t]: r[t-1] = 1000 e + t - 1.
    nz = ~batch.is_first
    torch.testing.assert_close(batch.reward[nz], 1000 * episode[nz] + t[nz] - 1)
    assert torch.equal(batch.is_terminal, last)


def test_padding_short_episodes_and_errors(write_dataset):
    ds = write_dataset("test/short-v0", [2, 3])
    with pytest.raises(UserError, match="shorter than the window"):
        ds.sequences(4, 10)
    batch = ds.sequences(8, 6, pad=True, seed=1).sample()
    n_obs = batch.obs[:, 0, 0] + 3  # episode 0 has 3 observations, episode 1 has 4
    assert torch.equal(batch.mask.sum(1).float(), n_obs)
    assert (batch.obs[~batch.mask] == 0).all() and not batch.action_mask[~batch.mask].any()


def test_transitions(write_dataset):
    ds = write_dataset("test/tr-v0", [4, 6], discrete=False, terminal_last=False)
    tb = ds.transitions(128, seed=0).sample()
    torch.testing.assert_close(tb.next_obs[:, 1], tb.obs[:, 1] + 1)
    assert torch.equal(tb.next_obs[:, 0], tb.obs[:, 0])
    torch.testing.assert_close(tb.action[:, 0], (tb.obs[:, 0] + tb.obs[:, 1] / 100) / 100)
    torch.testing.assert_close(tb.reward, 1000 * tb.obs[:, 0] + tb.obs[:, 1])
    assert not tb.done.any()  # time-outs are not terminal


def test_pixel_windows_read_out_of_core(monkeypatch):
    import wmil.data.dataset as dataset_module

    ds = build("test/pix-v0", episodes=2, policy="random", pixels=16, max_episode_steps=10)
    monkeypatch.setattr(dataset_module, "IN_MEMORY_BYTES", 0)
    ooc = load("test/pix-v0")
    assert ooc.aligned.obs is None
    batch = ooc.sequences(4, 5, seed=2).sample()
    in_ram = ds.sequences(4, 5, seed=2).sample()
    assert batch.obs.dtype == torch.uint8 and batch.obs.shape == (4, 5, 3, 16, 16)
    assert torch.equal(batch.obs, in_ram.obs)
    tb_ooc, tb_ram = ooc.transitions(8, seed=1).sample(), ds.transitions(8, seed=1).sample()
    assert torch.equal(tb_ooc.next_obs, tb_ram.next_obs)


def test_views_split_and_summary(write_dataset):
    ds = write_dataset("test/views-v0", [3, 4, 5, 6, 7])
    train, val = ds.split(0.4, seed=0)
    assert len(train) == 3 and len(val) == 2
    assert sorted(np.concatenate([train.episode_ids, val.episode_ids])) == list(range(5))
    assert len(ds.filter(lambda e: e.length > 4)) == 3
    with pytest.raises(UserError, match="only 5"):
        ds.head(6)
    s = ds.summary()
    assert s["episodes"] == 5 and s["steps"] == 25 and s["length"]["max"] == 7
    assert "episodes=5" in repr(ds) and "float32" in repr(ds)


def test_memory_budget_sizes_default_and_environment(monkeypatch):
    from wmil.data import dataset as dataset_module
    from wmil.data.dataset import memory_budget, parse_size, set_memory_budget

    assert parse_size("4GB") == 4 * 10**9 and parse_size("512MiB") == 512 * 2**20 and parse_size("2e9") == 2 * 10**9
    with pytest.raises(UserError, match=r"--memory-budget='lots': expected a size such as 4GB"):
        parse_size("lots")
    monkeypatch.setattr(dataset_module, "IN_MEMORY_BYTES", None)
    monkeypatch.delenv("WMIL_IN_MEMORY_BYTES", raising=False)
    monkeypatch.setattr(dataset_module, "available_memory", lambda: 4 * 2**30)
    assert memory_budget() == 2**30, "a quarter of the available memory when that is below 2 GiB"
    monkeypatch.setattr(dataset_module, "available_memory", lambda: None)
    assert memory_budget() == 2 * 2**30
    monkeypatch.setenv("WMIL_IN_MEMORY_BYTES", "3GiB")
    assert memory_budget() == 3 * 2**30
    set_memory_budget("1MB")
    assert memory_budget() == 10**6, "--memory-budget wins over the environment"
