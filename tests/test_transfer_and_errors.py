"""D4RL import/export round trip, merge/split, and every bad input the dataset layer rejects."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from cli.main import main as wmil_main
from wmil.data import load
from wmil.data.build import BuildConfig, build_dataset
from wmil.data.transfer import export_d4rl, import_d4rl, merge, split
from wmil.errors import UserError


def d4rl_file(path, n=30, ends=(9, 19), discrete=False, next_obs=True, **overrides):
    rng = np.random.default_rng(0)
    data = {
        "observations": rng.normal(size=(n, 4)).astype(np.float32),
        "actions": rng.integers(0, 3, n) if discrete else rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n),
        "terminals": np.isin(np.arange(n), ends[:1]),
        "timeouts": np.isin(np.arange(n), ends[1:]),
    }
    if next_obs:
        data["next_observations"] = rng.normal(size=(n, 4)).astype(np.float32)
    data.update(overrides)
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            if value is not None:
                f.create_dataset(key, data=value)
    return path


def assert_same_episodes(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        ea, eb = a.episode(i), b.episode(i)
        for key in ("observations", "actions", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(getattr(ea, key), getattr(eb, key), err_msg=key)


# ---- D4RL ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("discrete", [False, True])
def test_d4rl_round_trip_is_exact(tmp_path, discrete):
    src = d4rl_file(tmp_path / "src.hdf5", discrete=discrete)
    first = import_d4rl(src, "imp/one-v0", ref_min_score=-1.0, ref_max_score=5.0)
    assert [first.episode(i).length for i in range(3)] == [10, 10, 10]  # split after 9 and 19, rest cut at the end
    e0 = first.episode(0)
    with h5py.File(src) as f:
        np.testing.assert_array_equal(e0.observations[:10], f["observations"][:10])
        np.testing.assert_array_equal(e0.observations[10], f["next_observations"][9])
    assert e0.terminations[-1] and first.episode(1).truncations[-1] and first.episode(2).truncations[-1]
    export_d4rl("imp/one-v0", tmp_path / "out.hdf5")
    second = import_d4rl(tmp_path / "out.hdf5", "imp/two-v0")
    assert_same_episodes(first, second)
    assert second.ref_min_score == -1.0 and second.ref_max_score == 5.0
    assert second.spec == first.spec


def test_d4rl_without_next_observations_drops_each_last_step(tmp_path):
    ds = import_d4rl(d4rl_file(tmp_path / "f.hdf5", next_obs=False), "imp/drop-v0")
    assert [ds.episode(i).length for i in range(3)] == [9, 9, 9]
    with h5py.File(tmp_path / "f.hdf5") as f:
        np.testing.assert_array_equal(ds.episode(1).observations, f["observations"][10:20])
    assert not ds.episode(0).terminations.any()  # its terminal step was dropped


@pytest.mark.parametrize("case, message", [
    ("missing", "missing field.*rewards"),
    ("mismatch", "'actions' has 29 rows but 'observations' has 30"),
    ("nan", "'observations' contains NaN"),
    ("empty", "no steps"),
    ("corrupt", "not a readable HDF5"),
    ("absent", "file not found"),
])
def test_bad_d4rl_files(tmp_path, minari_root, case, message):
    path = tmp_path / "bad.hdf5"
    if case == "missing":
        d4rl_file(path, rewards=None)
    elif case == "mismatch":
        d4rl_file(path, actions=np.zeros((29, 2), np.float32))
    elif case == "nan":
        obs = np.zeros((30, 4), np.float32)
        obs[12, 1] = np.nan
        d4rl_file(path, observations=obs)
    elif case == "empty":
        d4rl_file(path, n=0, observations=np.zeros((0, 4), np.float32), actions=np.zeros((0, 2), np.float32),
                  next_observations=np.zeros((0, 4), np.float32))
    elif case == "corrupt":
        d4rl_file(tmp_path / "good.hdf5")
        path.write_bytes((tmp_path / "good.hdf5").read_bytes()[:700])
    with pytest.raises(UserError, match=message):
        import_d4rl(path, "imp/bad-v0")
    assert not (minari_root / "imp" / "bad-v0").exists()


# ---- merge / split ------------------------------------------------------------------------------
def test_merge_and_split(write_dataset):
    a = write_dataset("mm/a-v0", [3, 4])
    b = write_dataset("mm/b-v0", [5])
    merged = merge(["mm/a-v0", "mm/b-v0"], "mm/ab-v0")
    assert len(merged) == 3 and merged.total_steps == 12
    np.testing.assert_array_equal(merged.episode(2).observations, b.episode(0).observations)
    train, val = split("mm/ab-v0", "mm/train-v0", "mm/val-v0", validation_fraction=0.34, seed=0)
    assert len(train) + len(val) == 3 and len(val) == 1
    write_dataset("mm/cont-v0", [3], discrete=False)
    with pytest.raises(UserError, match="spaces differ"):
        merge(["mm/a-v0", "mm/cont-v0"], "mm/bad-v0")
    assert len(a) == 2


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../escape-v0", "/abs/x-v0", "ns/no-version", "ns/a b-v0", "ns/../x-v0", "a/b-v0", ""])
def test_invalid_names(name):
    with pytest.raises(UserError, match="invalid dataset name"):
        build_dataset(BuildConfig(name=name, env="CartPole-v1", episodes=1), progress=False)


def test_existing_dataset_needs_overwrite(write_dataset):
    write_dataset("xx/exists-v0", [3])
    config = BuildConfig(name="xx/exists-v0", env="CartPole-v1", episodes=1, ref_episodes=0)
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        build_dataset(config, progress=False)
    ds = build_dataset(config, overwrite=True, progress=False)
    assert ds.episode(0).observations.shape[1] == 4  # replaced by the CartPole recording


def test_unknown_env_and_unsupported_spaces():
    with pytest.raises(UserError, match="CartPol-v1"):
        build_dataset(BuildConfig(name="xx/y-v0", env="CartPol-v1", episodes=1), progress=False)
    with pytest.raises(UserError, match="unsupported"):
        build_dataset(BuildConfig(name="xx/y-v0", env="Blackjack-v1", episodes=1), progress=False)
    with pytest.raises(UserError, match="unknown policy"):
        build_dataset(BuildConfig(name="xx/y-v0", env="CartPole-v1", policy="greedy", episodes=1), progress=False)
    with pytest.raises(UserError, match="between 0 and 1"):
        build_dataset(BuildConfig(name="xx/y-v0", env="CartPole-v1", epsilon=[1.5], episodes=1), progress=False)
    with pytest.raises(UserError, match="no episodes"):
        build_dataset(BuildConfig(name="xx/y-v0", env="CartPole-v1", episodes=0), progress=False)


def test_missing_and_damaged_datasets(write_dataset, minari_root):
    with pytest.raises(UserError, match="not found"):
        load("nope/missing-v0")
    write_dataset("xx/trunc-v0", [5, 5])
    h5 = minari_root / "xx" / "trunc-v0" / "data" / "main_data.hdf5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 3])
    with pytest.raises(UserError, match="truncated or corrupted"):
        load("xx/trunc-v0").sequences(2, 3)
    write_dataset("xx/meta-v0", [5])
    (minari_root / "xx" / "meta-v0" / "data" / "metadata.json").write_text("{not json")
    with pytest.raises(UserError, match="metadata"):
        load("xx/meta-v0")


def test_nan_in_stored_data_is_reported(write_dataset, minari_root):
    write_dataset("xx/nan-v0", [6])
    h5 = minari_root / "xx" / "nan-v0" / "data" / "main_data.hdf5"
    with h5py.File(h5, "a") as f:
        f["episode_0/observations"][2, 1] = np.inf
    with pytest.raises(UserError, match="'observations' contains NaN or inf"):
        load("xx/nan-v0").sequences(2, 3)


# ---- CLI ----------------------------------------------------------------------------------------
def test_cli_build_info_export_import(tmp_path, capsys):
    assert wmil_main(["build-dataset", "--name", "cli/cp-v0", "--env", "CartPole-v1", "--policy", "expert",
                      "--epsilon", "0,1", "--episodes", "4", "--ref-episodes", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote cli/cp-v0" in out and "ref_max_score" in out
    assert wmil_main(["datasets", "info", "cli/cp-v0", "--json"]) == 0
    assert '"episodes": 4' in capsys.readouterr().out
    assert wmil_main(["datasets", "export", "cli/cp-v0", str(tmp_path / "cp.hdf5")]) == 0
    assert wmil_main(["datasets", "import", str(tmp_path / "cp.hdf5"), "--name", "cli/back-v0"]) == 0
    assert_same_episodes(load("cli/cp-v0"), load("cli/back-v0"))
    assert wmil_main(["datasets", "list"]) == 0
    listing = capsys.readouterr().out
    assert "cli/cp-v0" in listing and "cli/back-v0" in listing


def test_cli_errors_are_one_line_without_traceback(minari_root):
    result = subprocess.run([sys.executable, "-m", "cli.main", "datasets", "info", "nope/x-v0"],
                            capture_output=True, text=True, env={"MINARI_DATASETS_PATH": str(minari_root), "PATH": ""})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: dataset 'nope/x-v0' not found")
    assert "Traceback" not in result.stderr
    assert wmil_main(["build-dataset", "--name", "aa/b-v0", "--env", "NoSuchEnv-v0", "--episodes", "1"]) == 2
