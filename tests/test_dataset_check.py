"""The dataset check: what passes, the explicit allowance for NaN/inf, and that every reader and
writer runs it (the failing inputs themselves are in test_fuzz.py)."""

import gymnasium as gym
import h5py
import numpy as np
import pytest

from cli.main import main as wmil_main
from wmil.data import load
from wmil.data.storage import DatasetWriter, Episode
from wmil.errors import UserError


def test_a_good_dataset_passes_and_counts_every_step(write_dataset, capsys):
    write_dataset("ck/good-v0", [5, 7, 3], discrete=False)
    report = load("ck/good-v0").check()
    assert (report.episodes, report.steps) == (3, 15)
    assert wmil_main(["datasets", "check", "ck/good-v0"]) == 0
    assert "ok: dataset ck/good-v0: 3 episodes, 15 steps verified" in capsys.readouterr().out


def test_pixel_datasets_are_checked_without_reading_pixels(tmp_path):
    from wmil.data.build import BuildConfig, build_dataset

    ds = build_dataset(BuildConfig(name="ck/pix-v0", env="CartPole-v1", episodes=2, pixels=16, max_episode_steps=5,
                                   ref_episodes=0), progress=False)
    assert load("ck/pix-v0").check().steps == ds.total_steps


def _poison_rewards(minari_root, name):
    with h5py.File(minari_root / name / "data" / "main_data.hdf5", "a") as f:
        f["episode_0/rewards"][1] = np.nan


def test_nonfinite_values_need_the_explicit_option(write_dataset, minari_root, tmp_path, capsys):
    """Demonstrations without rewards (stored as NaN) are fine for behaviour cloning, when said so."""
    write_dataset("ck/norew-v0", [6, 8, 7])
    _poison_rewards(minari_root, "ck/norew-v0")
    with pytest.raises(UserError, match="episode 0: field 'rewards' contains NaN or inf \\(index 1: nan\\)"):
        load("ck/norew-v0").check()
    assert load("ck/norew-v0").check(allow_nonfinite=True).steps == 21
    assert wmil_main(["datasets", "info", "ck/norew-v0"]) == 2
    assert capsys.readouterr().out == ""
    assert wmil_main(["datasets", "info", "ck/norew-v0", "--allow-nonfinite"]) == 0
    args = ["imagine", "--algo", "bc", "--expert", "ck/norew-v0", "--preset", "tiny", "--steps", "2", "--quiet",
            "--device", "cpu", "--out", str(tmp_path / "bc")]
    assert wmil_main(args) == 2 and not (tmp_path / "bc").exists()
    capsys.readouterr()
    assert wmil_main(args + ["--allow-nonfinite"]) == 0
    from wmil.runs import RunDir

    assert RunDir(tmp_path / "bc", "policy").read_config()["train"]["allow_nonfinite"] is True
    # A strict check of a view that was checked permissively runs again.
    view = load("ck/norew-v0")
    view.check(allow_nonfinite=True)
    with pytest.raises(UserError, match="NaN or inf"):
        view.check(allow_nonfinite=False)


def test_samplers_and_episode_access_run_the_check(write_dataset, minari_root):
    write_dataset("ck/short-v0", [6, 8])
    with h5py.File(minari_root / "ck/short-v0/data/main_data.hdf5", "a") as f:
        rewards = f["episode_1/rewards"][:-2]
        del f["episode_1/rewards"]
        f["episode_1/rewards"] = rewards
    for read in (lambda d: d.sequences(2, 3), lambda d: d.transitions(4), lambda d: d.episode(0), lambda d: d.summary()):
        with pytest.raises(UserError, match=r"episode 1: field 'rewards' has shape \(6,\), expected \(8,\)"):
            read(load("ck/short-v0"))


def test_the_writer_refuses_bad_episodes_and_leaves_nothing(minari_root):
    obs_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    good = Episode(np.zeros((4, 2), np.float32), np.array([0, 1, 1]), np.zeros(3), np.array([0, 0, 1], bool),
                   np.zeros(3, bool))
    bad = Episode(np.zeros((4, 2), np.float32), np.array([0, 1, 1]), np.zeros(3), np.array([0, 0, 1], bool),
                  np.zeros(3, bool))
    bad.observations[2, 0] = np.inf
    with pytest.raises(UserError, match=r"dataset ck/w-v0: episode 1: field 'observations' contains NaN or inf "
                                        r"\(index \[2, 0\]: inf\)"):
        with DatasetWriter("ck/w-v0", obs_space, gym.spaces.Discrete(2)) as writer:
            writer.add(good)
            writer.add(bad)
    assert not (minari_root / "ck" / "w-v0").exists()
    assert not [p for p in minari_root.iterdir() if p.name.startswith(".wmil-build")]


def test_a_d4rl_file_is_checked_without_importing(tmp_path, capsys, minari_root):
    path = tmp_path / "f.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = np.zeros((20, 3), np.float32)
        f["actions"] = np.zeros(20, np.int64)
        f["rewards"] = np.zeros(20)
        f["terminals"] = np.isin(np.arange(20), [9, 19])
    assert wmil_main(["datasets", "check", str(path)]) == 0
    assert "2 episodes, 18 steps" in capsys.readouterr().out  # no next_observations: each last step dropped
    assert not minari_root.exists() or not any(minari_root.iterdir())


def test_recipe_epsilons_are_not_truncated(tmp_path):
    from wmil.data.build import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: ck/r-v0\nenv: CartPole-v1\nepsilon: [0, 0.5, 1]\nepisodes: 3\n")
    assert [p.episodes for p in load_recipe(path).resolved_parts()] == [1, 1, 1]
    with pytest.raises(UserError, match="3 epsilon values for 2 episode"):
        load_recipe(path, episodes=2)
