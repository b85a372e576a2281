"""A fuzz corpus of malformed input, generated here, run through the CLI.

Families (issue 14): corrupted HDF5 (damaged headers, truncation, groups where arrays are
expected, scalar fields), short or long per-step fields, NaN/inf/1e30 values, fractional or
misplaced flags, actions outside the space, names too long for the file system, export to a
missing directory, bad recipes (wrong types, non-UTF-8 bytes, ε lists longer than the episode
count), out-of-range CLI numbers, damaged run directories (a config missing a field, a torn
metrics line, a truncated checkpoint) and resumes with a changed config.

Every case must end in exit code 2 with exactly one ``error:`` line on stderr (no traceback,
nothing on stdout: no silent accept, no normal summary) and leave the file tree as it was
(nothing half-written; a run directory's ``.lock`` aside). The few inputs that are repaired
rather than refused (a torn last metrics line) must say so in one ``warning:`` line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import yaml

from cli.main import main as wmil_main

WM = ["-o", "batch_size=4", "-o", "seq_len=4", "-o", "log_every=1", "-o", "eval_every=100", "-o",
      "checkpoint_every=1", "-o", "open_loop_context=2", "-o", "eval_batches=1"]
LONG = "a" * 240


# ---- the pristine world every case starts from ------------------------------------------------------
def _write(name, discrete=True, lengths=(8, 9, 7, 10)):
    from wmil.data.storage import DatasetWriter, Episode

    obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    act_space = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1, 1, (2,), np.float32)
    rng = np.random.default_rng(0)
    with DatasetWriter(name, obs_space, act_space) as writer:
        for T in lengths:
            actions = rng.integers(0, 3, T) if discrete else rng.uniform(-1, 1, (T, 2)).astype(np.float32)
            terms = np.zeros(T, bool)
            terms[-1] = True
            writer.add(Episode(rng.normal(size=(T + 1, 3)).astype(np.float32), actions, rng.normal(size=T), terms,
                               np.zeros(T, bool)))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Datasets fz/disc-v0, fz/cont-v0 and a 2-step `dynamics` world-model run on fz/disc-v0."""
    from wmil.train.world_model import train_world_model

    base = tmp_path_factory.mktemp("pristine")
    saved = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(base / "minari")
    try:
        _write("fz/disc-v0")
        _write("fz/cont-v0", discrete=False)
        overrides = {k.split("=")[0]: k.split("=")[1] for k in WM[1::2]}
        train_world_model("fz/disc-v0", model="dynamics", preset="tiny", out=base / "wm", steps=2,
                          overrides=overrides, progress=False, device="cpu")
    finally:
        if saved is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = saved
    return base


class World:
    """A case's copy of the pristine world, with helpers to damage it."""

    def __init__(self, root: Path, pristine: Path):
        self.root = root
        self.minari = root / "minari"
        shutil.copytree(pristine / "minari", self.minari)
        shutil.copytree(pristine / "wm", root / "wm")
        self.wm = root / "wm"

    def h5(self, name="fz/disc-v0") -> Path:
        return self.minari / name / "data" / "main_data.hdf5"

    def edit(self, name, fn):
        with h5py.File(self.h5(name), "a") as f:
            fn(f)

    def replace(self, name, episode, field, value):
        def fn(f):
            group = f[f"episode_{episode}"]
            del group[field]
            if isinstance(value, str) and value == "group":
                group.create_group(field)
            else:
                group[field] = value
        self.edit(name, fn)

    def field(self, name, episode, field):
        with h5py.File(self.h5(name), "r") as f:
            return f[f"episode_{episode}/{field}"][()]

    def d4rl(self, n=30, **overrides) -> Path:
        rng = np.random.default_rng(0)
        data = {"observations": rng.normal(size=(n, 3)).astype(np.float32), "actions": rng.integers(0, 3, n),
                "rewards": rng.normal(size=n), "terminals": np.isin(np.arange(n), [9]),
                "timeouts": np.isin(np.arange(n), [19]), "next_observations": rng.normal(size=(n, 3)).astype(np.float32)}
        data.update(overrides)
        path = self.root / "in.hdf5"
        with h5py.File(path, "w") as f:
            for key, value in data.items():
                if isinstance(value, str) and value == "group":
                    f.create_group(key)
                elif value is not None:
                    f.create_dataset(key, data=value)
        return path

    def recipe(self, text: str | bytes) -> Path:
        path = self.root / "recipe.yaml"
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        return path

    def config(self, edit) -> None:
        path = self.wm / "config.yaml"
        config = yaml.safe_load(path.read_text())
        edit(config)
        path.write_text(yaml.safe_dump(config))


# ---- the corpus -----------------------------------------------------------------------------------------
CASES: dict[str, tuple] = {}


def case(name, expect, outcome="error"):
    def register(fn):
        CASES[name] = (fn, expect, outcome)
        return fn
    return register


def _damage_cases():
    """Minari dataset damage × the commands that read datasets."""
    def obs_value(value):
        return lambda w: w.replace("fz/disc-v0", 1, "observations", _with(w.field("fz/disc-v0", 1, "observations"), (2, 1), value))

    def reward_value(value):
        return lambda w: w.replace("fz/disc-v0", 2, "rewards", _with(w.field("fz/disc-v0", 2, "rewards"), 3, value))

    def header(w):
        data = bytearray(w.h5().read_bytes())
        data[:8] = b"NOTHDF5!"
        w.h5().write_bytes(bytes(data))

    def truncate(fraction):
        return lambda w: w.h5().write_bytes(w.h5().read_bytes()[:int(w.h5().stat().st_size * fraction)])

    def flag(value, index=-1, field="terminations"):
        def fn(w):
            flags = w.field("fz/disc-v0", 1, field).astype(np.float64)
            flags[index] = value
            w.replace("fz/disc-v0", 1, field, flags)
        return fn

    def actions(values):
        return lambda w: w.replace("fz/disc-v0", 0, "actions", values)

    damage = {
        "header": (header, "cannot read HDF5 file"),
        "truncated-50%": (truncate(0.5), "truncated or corrupted"),
        "truncated-95%": (truncate(0.95), "truncated or corrupted"),
        "actions-group": (lambda w: w.replace("fz/disc-v0", 1, "actions", "group"), "episode 1: field 'actions' is a group"),
        "observations-group": (lambda w: w.replace("fz/disc-v0", 1, "observations", "group"), "field 'observations' is a group"),
        "rewards-scalar": (lambda w: w.replace("fz/disc-v0", 1, "rewards", 1.0), "field 'rewards' is a scalar"),
        "missing-episode": (lambda w: w.edit("fz/disc-v0", lambda f: f.__delitem__("episode_3")), "episode 3 is missing"),
        "missing-field": (lambda w: w.edit("fz/disc-v0", lambda f: f["episode_2"].__delitem__("truncations")),
                          "field 'truncations' is missing"),
        "rewards-short": (lambda w: w.replace("fz/disc-v0", 1, "rewards", np.zeros(8)), r"'rewards' has shape \(8,\), expected \(9,\)"),
        "terminations-short": (lambda w: w.replace("fz/disc-v0", 1, "terminations", np.zeros(8, bool)),
                               r"'terminations' has shape \(8,\), expected \(9,\)"),
        "truncations-long": (lambda w: w.replace("fz/disc-v0", 1, "truncations", np.zeros(10, bool)),
                             r"'truncations' has shape \(10,\)"),
        "observations-short": (lambda w: w.replace("fz/disc-v0", 1, "observations", np.zeros((9, 3), np.float32)),
                               "'observations' has 9 entries for 9 actions"),
        "observations-width": (lambda w: w.replace("fz/disc-v0", 1, "observations", np.zeros((10, 2), np.float32)),
                               "expected \\(10, 3\\)"),
        "obs-nan": (obs_value(np.nan), r"episode 1: field 'observations' contains NaN or inf \(index \[2, 1\]: nan\)"),
        "obs-inf": (obs_value(np.inf), r"'observations' contains NaN or inf \(index \[2, 1\]: inf\)"),
        "obs-1e30": (obs_value(1e30), r"'observations' index \[2, 1\] is 1e\+30, beyond"),
        "reward-nan": (reward_value(np.nan), r"episode 2: field 'rewards' contains NaN or inf \(index 3"),
        "reward-1e30": (reward_value(1e30), r"'rewards' index 3 is 1e\+30"),
        "flag-fraction": (flag(0.5), r"'terminations' index 8 is 0.5; flags must be exactly 0 or 1"),
        "flag-two": (flag(2.0), "flags must be exactly 0 or 1"),
        "flag-early": (flag(1.0, index=2, field="truncations"), r"'truncations' is set at index 2, before the episode's last"),
        "action-out-of-range": (actions(np.array([0, 1, 5, 0, 1, 2, 0, 1])), r"'actions' index 2 is 5, outside the action space"),
        "action-negative": (actions(np.array([0, -1, 2, 0, 1, 2, 0, 1])), "'actions' index 1 is -1"),
        "action-float": (actions(np.zeros(8)), "'actions' has shape \\(8,\\) float64; a Discrete\\(3\\) space needs"),
        "metadata-garbage": (lambda w: (w.minari / "fz/disc-v0/data/metadata.json").write_text("{not json"), "unreadable metadata"),
        "metadata-bytes": (lambda w: (w.minari / "fz/disc-v0/data/metadata.json").write_bytes(b"\xff\xfe{}"), "unreadable metadata"),
        "metadata-episodes": (lambda w: _edit_json(w.minari / "fz/disc-v0/data/metadata.json", total_episodes="x"),
                              "'total_episodes' is 'x'"),
        "hdf5-missing": (lambda w: w.h5().unlink(), "main_data.hdf5 is missing"),
    }
    for key, (fn, expect) in damage.items():
        for command in ("check", "info", "train-model"):
            args = {"check": ["datasets", "check", "fz/disc-v0"], "info": ["datasets", "info", "fz/disc-v0"],
                    "train-model": ["train-model", "--dataset", "fz/disc-v0", "--model", "dynamics", "--preset", "tiny",
                                    "--steps", "2", "--out", "{root}/new-run", "--quiet", "--device", "cpu", *WM]}[command]
            case(f"dataset:{key}:{command}", expect)(lambda w, fn=fn, args=args: (fn(w), args)[1])
    # The other readers, on a few of the damages.
    for key in ("obs-nan", "rewards-short", "actions-group", "flag-fraction", "truncated-50%"):
        fn, expect = damage[key]
        for command, args in {
            "imagine": ["imagine", "--algo", "bc", "--expert", "fz/disc-v0", "--preset", "tiny", "--steps", "2",
                        "--out", "{root}/new-run", "--quiet", "--device", "cpu"],
            "export": ["datasets", "export", "fz/disc-v0", "{root}/out.hdf5"],
            "merge": ["datasets", "merge", "fz/disc-v0", "fz/disc-v0", "--name", "fz/merged-v0"],
            "split": ["datasets", "split", "fz/disc-v0", "--train", "fz/tr-v0", "--validation", "fz/va-v0"],
        }.items():
            case(f"dataset:{key}:{command}", expect)(lambda w, fn=fn, args=args: (fn(w), args)[1])
    cont = {
        "action-outside-box": (np.full((8, 2), 1.5, np.float32), r"'actions' index \[0, 0\] is 1.5, outside the action space"),
        "action-nan": (np.full((8, 2), np.nan, np.float32), "'actions' contains NaN or inf"),
        "action-width": (np.zeros((8, 3), np.float32), r"a Box\(2\) space needs \(8, 2\) numbers"),
    }
    for key, (value, expect) in cont.items():
        case(f"dataset:{key}:check", expect)(
            lambda w, value=value: (w.replace("fz/cont-v0", 0, "actions", value), ["datasets", "check", "fz/cont-v0"])[1])


def _with(array, index, value):
    array = np.array(array, dtype=np.float64 if np.asarray(array).dtype == np.float64 else np.asarray(array).dtype)
    array[index] = value
    return array


def _edit_json(path, **fields):
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def _d4rl_cases():
    def file(**overrides):
        return lambda w: w.d4rl(**overrides)

    def raw(data: bytes):
        def fn(w):
            path = w.root / "in.hdf5"
            path.write_bytes(data)
            return path
        return fn

    def truncated(w):
        path = w.d4rl()
        path.write_bytes(path.read_bytes()[:900])
        return path

    def attrs(w):
        path = w.d4rl()
        with h5py.File(path, "a") as f:
            f.attrs["ref_min_score"] = np.nan
        return path

    n = 30
    obs = np.zeros((n, 3), np.float32)
    files = {
        "not-hdf5": (raw(b"observations,actions\n1,2\n"), "not a readable HDF5 file"),
        "truncated": (truncated, "not a readable HDF5 file|truncated or corrupted"),
        "missing-rewards": (file(rewards=None), "missing field.*rewards"),
        "rewards-group": (file(rewards="group"), "field 'rewards' is a group"),
        "terminals-scalar": (file(terminals=np.float64(1.0)), "field 'terminals' is a scalar"),
        "rewards-2d": (file(rewards=np.zeros((n, 2))), r"field 'rewards' has shape \(30, 2\)"),
        "terminals-short": (file(terminals=np.zeros(n - 1, bool)), "'terminals' has 29 rows but 'observations' has 30"),
        "terminals-fraction": (file(terminals=np.where(np.arange(n) == 9, 0.5, 0.0)), "'terminals' row 9 is 0.5"),
        "timeouts-two": (file(timeouts=np.where(np.arange(n) == 19, 2, 0)), "'timeouts' row 19 is 2"),
        "obs-nan": (file(observations=_with(obs, (4, 2), np.nan)), r"rows 0..9\): field 'observations' contains NaN"),
        "reward-inf": (file(rewards=_with(np.zeros(n), 12, np.inf)), r"rows 10..19\): field 'rewards' contains NaN or inf"),
        "obs-1e300": (file(observations=_with(np.zeros((n, 3)), (25, 0), 1e300)), r"'observations' index \[5, 0\] is 1e\+300"),
        "actions-nan": (file(actions=_with(np.zeros((n, 2), np.float32), (3, 1), np.nan)), "'actions' contains NaN or inf \\(row 3"),
        "actions-negative": (file(actions=np.full(n, -1)), "negative integers"),
        "obs-strings": (file(observations=np.array([[b"x"] * 3] * n)), "field 'observations' has shape"),
        "next-obs-shape": (file(next_observations=np.zeros((n, 4), np.float32)), "'next_observations' has shape"),
        "empty": (file(n=0, observations=np.zeros((0, 3), np.float32), actions=np.zeros(0, np.int64), rewards=np.zeros(0),
                       terminals=np.zeros(0, bool), timeouts=np.zeros(0, bool), next_observations=np.zeros((0, 3), np.float32)),
                  "no steps"),
        "ref-attr-nan": (attrs, "attribute ref_min_score nan: must be a finite number"),
    }
    for key, (make, expect) in files.items():
        case(f"d4rl:{key}:import", expect)(
            lambda w, make=make: ["datasets", "import", str(make(w)), "--name", "fz/imported-v0"])
        if key != "ref-attr-nan":  # the reference scores are the import's business
            case(f"d4rl:{key}:check", expect)(lambda w, make=make: ["datasets", "check", str(make(w))])
    case("d4rl:ref-score-nan-flag:import", "--ref-min-score nan: must be a finite number")(
        lambda w: ["datasets", "import", str(w.d4rl()), "--name", "fz/imported-v0", "--ref-min-score", "nan"])


def _name_cases():
    long_name = f"fz/{LONG}-v0"
    case("name:long:build", "too long for the file system")(
        lambda w: ["build-dataset", "--name", long_name, "--env", "CartPole-v1", "--episodes", "1", "--quiet"])
    case("name:long:import", "too long for the file system")(
        lambda w: ["datasets", "import", str(w.d4rl()), "--name", long_name])
    case("name:long:info", "too long for the file system")(lambda w: ["datasets", "info", long_name])
    case("name:long:train-model", "too long for the file system")(
        lambda w: ["train-model", "--dataset", long_name, "--preset", "tiny", "--out", "{root}/new-run"])
    case("name:long-namespace:merge", "too long for the file system")(
        lambda w: ["datasets", "merge", "fz/disc-v0", "fz/disc-v0", "--name", f"{LONG}/x-v0"])
    case("name:huge-path:check", "not a readable dataset path|too long")(lambda w: ["datasets", "check", "x" * 5000])
    case("name:bad-characters:build", "invalid dataset name")(
        lambda w: ["build-dataset", "--name", "fz/a b-v0", "--env", "CartPole-v1", "--episodes", "1"])


def _export_cases():
    case("export:missing-directory", "directory not found")(
        lambda w: ["datasets", "export", "fz/disc-v0", "{root}/no/such/dir/out.hdf5"])
    case("export:onto-directory", "is a directory")(lambda w: ["datasets", "export", "fz/disc-v0", "{root}/wm"])
    case("export:exists", "already exists")(
        lambda w: ((w.root / "out.hdf5").write_text("x"), ["datasets", "export", "fz/disc-v0", "{root}/out.hdf5"])[1])


def _recipe_cases():
    base = "name: fz/rec-v0\nenv: CartPole-v1\n"
    recipes = {
        "episodes-string": (base + "episodes: ten\n", "field 'episodes' must be an integer, got 'ten'"),
        "episodes-fraction": (base + "episodes: 2.5\n", "field 'episodes' must be an integer, got 2.5"),
        "episodes-bool": (base + "episodes: true\n", "field 'episodes' must be an integer"),
        "seed-negative": (base + "seed: -1\n", "--seed -1: must be >= 0"),
        "workers-zero": (base + "workers: 0\n", "--workers 0"),
        "epsilon-string": (base + "epsilon: lots\n", r"field 'epsilon\[0\]' must be a finite number"),
        "epsilon-bool": (base + "epsilon: [0.1, true]\n", r"field 'epsilon\[1\]' must be a finite number"),
        "epsilon-nan": (base + "epsilon: .nan\n", "must be a finite number"),
        "epsilon-range": (base + "epsilon: 1.5\n", "between 0 and 1"),
        "epsilon-too-many": (base + "epsilon: [0, 0.3, 0.6, 1]\nepisodes: 3\n", "4 epsilon values for 3 episode"),
        "epsilon-empty": (base + "epsilon: []\n", "'epsilon' is an empty list"),
        "pixels-string": (base + "pixels: '64'\n", "field 'pixels' must be an integer"),
        "grayscale-string": (base + "grayscale: 'yes'\n", "field 'grayscale' must be true or false"),
        "ref-score-nan": (base + "ref_min_score: .nan\n", "field 'ref_min_score' must be a finite number"),
        "description-number": (base + "description: 5\n", "field 'description' must be a string"),
        "name-number": ("name: 5\nenv: CartPole-v1\n", "field 'name' must be a string"),
        "parts-number": (base + "parts: 3\n", "field 'parts' must be a non-empty list"),
        "parts-fraction": (base + "parts:\n  - {episodes: 1.5}\n", r"'parts\[0\].episodes' must be an integer"),
        "parts-policy-number": (base + "parts:\n  - {policy: 1, episodes: 1}\n", r"'parts\[0\].policy' must be a string"),
        "parts-unknown-key": (base + "parts:\n  - {episodes: 1, eps: 0.1}\n", "entry 0 must be a mapping"),
        "unknown-field": (base + "episodez: 3\n", "unknown field.*episodez"),
        "numeric-key": (base + "1: 2\n", "unknown field.*1"),
        "missing-env": ("name: fz/rec-v0\n", "missing field 'env'"),
        "not-a-mapping": ("- name\n- env\n", "must be a YAML mapping"),
        "yaml-syntax": (base + "episodes: [1, \n", "cannot read recipe"),
        "not-utf8": (base.encode() + b"description: \xff\xfe\xfa\n", "cannot read recipe"),
        "bad-name": ("name: ../escape-v0\nenv: CartPole-v1\n", "invalid dataset name"),
    }
    for key, (text, expect) in recipes.items():
        case(f"recipe:{key}", expect)(lambda w, text=text: ["build-dataset", str(w.recipe(text)), "--quiet"])
    case("recipe:missing-file", "nope.yaml': no such file and no shipped recipe of that name")(
        lambda w: ["build-dataset", "{root}/nope.yaml"])
    case("recipe:directory", "wm': no such file and no shipped recipe of that name")(
        lambda w: ["build-dataset", "{root}/wm"])


def _number_cases():
    train = ["train-model", "--dataset", "fz/disc-v0", "--preset", "tiny", "--out", "{root}/new-run", "--quiet"]
    imagine = ["imagine", "--algo", "bc", "--expert", "fz/disc-v0", "--preset", "tiny", "--out", "{root}/new-run", "--quiet"]
    build = ["build-dataset", "--name", "fz/num-v0", "--env", "CartPole-v1", "--quiet"]
    numbers = {
        "train-model:steps-negative": (train + ["--steps", "-10"], "'--steps': -10 is not in the range x>=1"),
        "train-model:steps-zero": (train + ["--steps", "0"], "'--steps': 0 is not in the range"),
        "train-model:steps-text": (train + ["--steps", "ten"], "'--steps': 'ten' is not a valid integer"),
        "train-model:seed-negative": (train + ["--seed", "-1"], "'--seed': -1 is not in the range x>=0"),
        "imagine:steps-zero": (imagine + ["--steps", "0"], "'--steps': 0"),
        "imagine:expert-episodes-zero": (imagine + ["--expert-episodes", "0"], "'--expert-episodes': 0"),
        "imagine:expert-episodes-too-many": (imagine + ["--expert-episodes", "99"], "--expert-episodes 99: the expert dataset"),
        "evaluate:episodes-zero": (["evaluate", "{root}/wm", "--episodes", "0"], "'--episodes': 0"),
        "evaluate-model:batches-zero": (["evaluate-model", "{root}/wm", "--batches", "0"], "'--batches': 0"),
        "evaluate-model:context-zero": (["evaluate-model", "{root}/wm", "--context", "0"], "'--context': 0"),
        "build:episodes-zero": (build + ["--episodes", "0"], "'--episodes': 0"),
        "build:workers-zero": (build + ["--workers", "0"], "'--workers': 0"),
        "build:pixels-tiny": (build + ["--pixels", "4"], "'--pixels': 4 is not in the range 8<=x<=512"),
        "build:max-steps-zero": (build + ["--max-episode-steps", "0"], "'--max-episode-steps': 0"),
        "build:ref-episodes-negative": (build + ["--ref-episodes", "-1"], "'--ref-episodes': -1"),
        "build:epsilon-above-one": (build + ["--epsilon", "2"], "epsilon 2.0 must be between 0 and 1"),
        "build:epsilon-nan": (build + ["--epsilon", "nan"], r"field 'epsilon\[0\]' must be a finite number"),
        "build:epsilon-text": (build + ["--epsilon", "x"], "--epsilon 'x': expected a number"),
        "build:ref-score-inf": (build + ["--ref-max-score", "inf"], "field 'ref_max_score' must be a finite number"),
        "split:fraction-above-one": (["datasets", "split", "fz/disc-v0", "--train", "fz/a-v0", "--validation", "fz/b-v0",
                                      "--fraction", "1.5"], "'--fraction': 1.5 is not in the range 0<x<1"),
        "split:fraction-nan": (["datasets", "split", "fz/disc-v0", "--train", "fz/a-v0", "--validation", "fz/b-v0",
                                "--fraction", "nan"], "validation fraction nan"),
        "unknown-option": (["train-model", "--stepz", "3"], "No such option '--stepz'"),
        "train-model:on-divergence-choice": (train + ["-o", "on_divergence=maybe"],
                                             r"on_divergence='maybe' is not one of \['stop', 'warn'\]"),
        "imagine:on-divergence-choice": (imagine + ["-o", "on_divergence=sometimes"],
                                         r"on_divergence='sometimes' is not one of \['stop', 'warn'\]"),
    }
    for key, (args, expect) in numbers.items():
        case(f"number:{key}", expect)(lambda w, args=args: args)


def _run_dir_cases():
    evaluate_model = ["evaluate-model", "{root}/wm", "--batches", "1", "--context", "2"]
    resume = ["train-model", "--dataset", "fz/disc-v0", "--model", "dynamics", "--preset", "tiny", "--steps", "4",
              "--out", "{root}/wm", "--quiet", "--device", "cpu", *WM]

    def drop(path):
        def edit(config):
            node = config
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]
        return lambda w: w.config(edit)

    runs = {
        "config-missing-spec": (drop(["spec"]), evaluate_model, "field 'spec' missing"),
        "config-missing-model": (drop(["model"]), evaluate_model, "field 'model' missing"),
        "config-missing-train-field": (drop(["train", "validation_fraction"]), evaluate_model,
                                       "field 'validation_fraction' missing"),
        # A missing model field takes the preset's default; where that is not what was trained, it cannot load.
        "config-missing-model-field": (lambda w: w.config(lambda c: (c["model_config"].pop("units"),
                                                                     c.__setitem__("preset", "small"))),
                                       evaluate_model, "does not fit the model"),
        "config-spec-wrong-type": (lambda w: w.config(lambda c: c.__setitem__("spec", 5)), evaluate_model,
                                   "invalid config"),
        "config-garbage": (lambda w: (w.wm / "config.yaml").write_text("kind: [unclosed"), evaluate_model, "unreadable"),
        "config-bytes": (lambda w: (w.wm / "config.yaml").write_bytes(b"kind: \xff\xfe"), evaluate_model, "unreadable"),
        "config-list": (lambda w: (w.wm / "config.yaml").write_text("- a\n- b\n"), evaluate_model, "field 'kind' missing"),
        "config-kind": (lambda w: w.config(lambda c: c.__setitem__("kind", "policy")), evaluate_model,
                        "holds a policy run, not a world_model run"),
        "config-absent": (lambda w: (w.wm / "config.yaml").unlink(), evaluate_model, "not a wmil run directory"),
        "checkpoint-truncated": (lambda w: _truncate_all(w.wm), evaluate_model, "truncated or corrupted"),
        "checkpoint-garbage": (lambda w: _garbage_all(w.wm), evaluate_model, "truncated or corrupted"),
        "no-checkpoint": (lambda w: shutil.rmtree(w.wm / "checkpoints"), evaluate_model, "no checkpoint yet"),
        "resume-other-seed": (lambda w: None, resume + ["--seed", "3"], r"different train.seed \(0 → 3\); resume"),
        "resume-other-model": (lambda w: None, [a if a != "dynamics" else "rssm" for a in resume],
                               r"different model \('dynamics' → 'rssm'\), model_config \("),
        "resume-fewer-steps": (lambda w: None, [a if a != "4" else "1" for a in resume], "already trained to step 2, past --steps 1"),
        "resume-truncated": (lambda w: _truncate_all(w.wm), resume, "every checkpoint is truncated or corrupted"),
        "out-is-a-file": (lambda w: (w.root / "file").write_text("x"),
                          [a if a != "{root}/wm" else "{root}/file" for a in resume], "is a file"),
        "imagine-model-missing-spec": (drop(["spec"]), ["imagine", "--algo", "dbc", "--model", "{root}/wm", "--expert",
                                                        "fz/disc-v0", "--preset", "tiny", "--out", "{root}/new-run"],
                                       "field 'spec' missing"),
    }
    for key, (damage, args, expect) in runs.items():
        case(f"run:{key}", expect)(lambda w, damage=damage, args=args: (damage(w), args)[1])

    def torn(w):
        with open(w.wm / "metrics.jsonl", "a") as f:
            f.write('{"step": 3, "loss/to')
    case("run:torn-metrics:plot", "metrics.jsonl: skipped unreadable line", outcome="warning")(
        lambda w: (torn(w), ["plot", "{root}/wm", "--out", "{root}/curves.png"])[1])


def _truncate_all(run):
    for p in (run / "checkpoints").glob("*.pt"):
        p.write_bytes(p.read_bytes()[:300])


def _garbage_all(run):
    for p in (run / "checkpoints").glob("*.pt"):
        p.write_bytes(os.urandom(2000))


_damage_cases()
_d4rl_cases()
_name_cases()
_export_cases()
_recipe_cases()
_number_cases()
_run_dir_cases()


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and p.name != ".lock"} | {str(p.relative_to(root)) + "/": 0 for p in root.rglob("*") if p.is_dir()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_input_is_one_line_and_writes_nothing(name, pristine, tmp_path, monkeypatch, capsys):
    fn, expect, outcome = CASES[name]
    world = World(tmp_path / "w", pristine)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(world.minari))
    args = [str(a).replace("{root}", str(world.root)) for a in fn(world)]
    before = _tree(world.root)
    capsys.readouterr()
    code = wmil_main(args)
    out, err = capsys.readouterr()
    if outcome == "warning":
        assert code == 0, err
        assert err.startswith("warning: ") and err.count("\n") == 1, err
        assert re.search(expect, err), err
        return
    assert code == 2, f"accepted (exit {code}): {out}{err}"
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert out == "", f"printed as if it worked: {out}"
    assert re.search(expect, err), err
    after = _tree(world.root)
    assert after == before, f"changed: {sorted(set(after.items()) ^ set(before.items()))[:6]}"


def test_the_corpus_covers_every_family():
    families = {name.split(":")[0] for name in CASES}
    assert families == {"dataset", "d4rl", "name", "export", "recipe", "number", "run"}
    assert len(CASES) >= 150
