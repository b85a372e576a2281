"""wmil train-model: run dirs, exact resume, validation metrics, and bad input."""

import json


import pytest
import torch

from cli.main import main as wmil_main
from wmil.errors import UserError
from wmil.runs import RunDir
from wmil.train.world_model import load_world_model, train_world_model

TINY = {"log_every": "2", "eval_every": "4", "checkpoint_every": "3", "batch_size": "4", "seq_len": "8",
        "open_loop_context": "3", "eval_batches": "1"}


@pytest.fixture
def world(write_dataset):
    return write_dataset("wm/world-v0", [12, 15, 9, 20, 11, 14], discrete=True)


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model,precision", [("rssm", "fp32"), ("gaussian_rssm", "fp32"), ("dynamics", "fp32"),
                                             ("rssm", "bf16"), ("gaussian_rssm", "bf16")])
def test_resume_continues_exactly(world, tmp_path, model, precision):
    kw = dict(model=model, preset="tiny", overrides=TINY, progress=False, device="cpu", precision=precision)
    full = train_world_model(world, out=tmp_path / "full", steps=7, **kw)
    part = tmp_path / "part"
    train_world_model(world, out=part, steps=4, **kw)
    # The run was "interrupted" after step 4; its last checkpoint is step 4 (saved at the end).
    resumed = train_world_model(world, out=part, steps=7, **kw)
    a, b = _params(full), _params(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # The resumed run's metrics read as one run, equal to the uninterrupted one (timings aside).
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in ms]
    resumed_metrics = strip(RunDir(part, "world_model").read_metrics())
    assert [m["step"] for m in resumed_metrics] == [2, 4, 6, 7]
    assert resumed_metrics == strip(RunDir(tmp_path / "full", "world_model").read_metrics())


def test_run_dir_contents_and_loading(world, tmp_path):
    out = tmp_path / "run"
    model = train_world_model("wm/world-v0", model="rssm", preset="tiny", out=out, steps=4, overrides=TINY,
                              progress=False, device="cpu")
    run = RunDir(out, "world_model")
    config = run.read_config()
    assert config["kind"] == "world_model" and config["model"] == "rssm" and config["train"]["steps"] == 4
    assert config["datasets"] == ["wm/world-v0"] and config["model_config"]["deter"] == model.config.deter
    assert list(out.glob("events.out.tfevents.*"))
    last = run.read_metrics()[-1]
    assert {"loss/total", "loss/obs", "loss/kl", "perf/frames_per_s", "open_loop/ratio_h15", "val/obs"} <= set(last)
    loaded = load_world_model(out)
    for attribute in ("run_dir", "run_config", "checkpoint_step", "fingerprint"):  # one object type
        assert getattr(loaded, attribute) == getattr(model, attribute), attribute
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_precision_is_recorded_and_a_resume_with_another_is_refused(world, tmp_path, capsys):
    out = tmp_path / "bf16"
    args = ["train-model", "--dataset", "wm/world-v0", "--preset", "tiny", "--steps", "2", "--quiet", "--device", "cpu"]
    args += [a for k, v in TINY.items() for a in ("-o", f"{k}={v}")]
    assert wmil_main(args + ["--out", str(out), "--precision", "bf16"]) == 0
    config = RunDir(out, "world_model").read_config()
    assert config["train"]["precision"] == "bf16"
    with pytest.raises(UserError, match=r"different train.precision \('bf16' → 'fp32'\)"):
        train_world_model(world, preset="tiny", out=out, steps=4, overrides=TINY, progress=False, device="cpu")
    with pytest.raises(UserError, match=r"different train.precision \('bf16' → 'fp32'\)"):
        train_world_model(world, preset="tiny", out=out, steps=4, progress=False, device="cpu",
                          overrides={**TINY, "precision": "fp32"})
    capsys.readouterr()
    assert wmil_main(args + ["--out", str(tmp_path / "x"), "-o", "train.precision=fp16"]) == 2
    assert "field 'precision': precision='fp16' is not one of ['fp32', 'bf16']" in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "nothing is written for a bad precision"
    assert wmil_main(args + ["--out", str(tmp_path / "y"), "--precision", "fp16"]) == 2


def test_runs_from_before_the_precision_option_resume_as_fp32(world, tmp_path):
    import yaml

    out = tmp_path / "old"
    train_world_model(world, preset="tiny", out=out, steps=3, overrides=TINY, progress=False, device="cpu")
    path = RunDir(out, "world_model").config_path
    config = yaml.safe_load(path.read_text())
    for block, field in (("train", "precision"), ("train", "end_windows"), ("model_config", "continue_input")):
        del config[block][field]  # fields added later: older runs resume with what they did
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    train_world_model(world, preset="tiny", out=out, steps=5, overrides=TINY, progress=False, device="cpu")
    assert [m["step"] for m in RunDir(out, "world_model").read_metrics()] == [2, 3, 4, 5]
    with pytest.raises(UserError, match=r"different train.precision \('fp32' → 'bf16'\)"):
        train_world_model(world, preset="tiny", out=out, steps=6, overrides=TINY, progress=False, device="cpu",
                          precision="bf16")


def test_cli_train_model_and_overrides(world, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train-model", "--dataset", "wm/world-v0", "--model", "gaussian_rssm", "--preset", "tiny", "--steps", "3",
            "--out", str(out), "--quiet", "--device", "cpu", "-o", "model.deter=24"]
    args += [a for k, v in TINY.items() for a in ("-o", f"{k}={v}")]
    assert wmil_main(args) == 0
    assert RunDir(out, "world_model").read_config()["model_config"]["deter"] == 24
    assert wmil_main(["train-model", "--dataset", "wm/world-v0", "--preset", "tiny", "-o", "nosuch=1",
                      "--out", str(tmp_path / "x")]) == 2
    assert "nosuch" in capsys.readouterr().err


def test_bad_inputs(world, write_dataset, tmp_path, minari_root):
    write_dataset("wm/cont-v0", [10, 12], discrete=False)
    with pytest.raises(UserError, match="does not match"):
        train_world_model(["wm/world-v0", "wm/cont-v0"], preset="tiny", out=tmp_path / "a", progress=False)
    out = tmp_path / "r"
    train_world_model(world, model="rssm", preset="tiny", out=out, steps=3, overrides=TINY, progress=False)
    with pytest.raises(UserError, match="different model"):
        train_world_model(world, model="dynamics", preset="tiny", out=out, steps=3, overrides=TINY, progress=False)
    ckpt = RunDir(out, "world_model").checkpoints()[-1]
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(UserError, match="truncated or corrupted"):
        load_world_model(out)
    data = {"format": 99, "kind": "world_model"}
    torch.save(data, ckpt)
    with pytest.raises(UserError, match="another wmil version"):
        load_world_model(out)
    with pytest.raises(UserError, match="not a wmil run directory"):
        load_world_model(tmp_path / "nothing")


def test_pixel_dataset_to_dynamics_is_rejected(tmp_path):
    from wmil.data.build import BuildConfig, build_dataset

    build_dataset(BuildConfig(name="wm/pix-v0", env="CartPole-v1", episodes=2, pixels=16, max_episode_steps=10,
                              ref_episodes=0), progress=False)
    with pytest.raises(UserError, match="dynamics"):
        train_world_model("wm/pix-v0", model="dynamics", preset="tiny", out=tmp_path / "p", progress=False)


def test_nan_loss_stops_without_checkpoint(world, tmp_path, monkeypatch):
    from wmil.world_models.rssm import RSSM

    original = RSSM.loss
    calls = {"n": 0}

    def poisoned(self, batch):
        losses, metrics, post = original(self, batch)
        if not self.training:
            return losses, metrics, post  # validation stays finite (a NaN there stops too: see below)
        calls["n"] += 1
        if calls["n"] >= 5:
            losses = dict(losses, kl=losses["kl"] * float("nan"))
        return losses, metrics, post

    monkeypatch.setattr(RSSM, "loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(UserError, match=r"step 5: loss term 'kl' is nan.*step_00000003"):
        train_world_model(world, model="rssm", preset="tiny", out=out, steps=8, overrides=TINY, progress=False)
    steps = [p.name for p in RunDir(out, "world_model").checkpoints()]
    assert steps == ["step_00000003.pt"]


def test_evaluate_model_reports_open_loop_errors(write_dataset, tmp_path, capsys):
    write_dataset("wm/long-v0", [40, 45, 38, 50, 41], discrete=True)
    out = tmp_path / "vec"
    train_world_model("wm/long-v0", model="rssm", preset="tiny", out=out, steps=3,
                      overrides={**TINY, "validation_fraction": "0.4"}, progress=False)
    assert wmil_main(["evaluate-model", str(out), "--batches", "2"]) == 0
    printed = capsys.readouterr().out
    assert "ratio" in printed and "per coordinate" in printed
    report = json.loads((out / "open_loop.json").read_text())
    for h in (1, 5, 15):
        assert report[f"open_loop/ratio_h{h}"] == pytest.approx(
            report[f"open_loop/mse_h{h}"] / report[f"open_loop/naive_mse_h{h}"], rel=1e-4)
    assert len(report["per_dim_mse_15_steps"]) == 3 and report["windows"] == 64


def test_evaluate_model_saves_an_image_strip_for_pixels(tmp_path):
    from wmil.data.build import BuildConfig, build_dataset
    from wmil.eval.world_model import evaluate_world_model

    build_dataset(BuildConfig(name="wm/pixstrip-v0", env="CartPole-v1", policy="expert", episodes=3, pixels=64,
                              grayscale=True, max_episode_steps=30, ref_episodes=0), progress=False)
    out = tmp_path / "pix"
    train_world_model("wm/pixstrip-v0", model="rssm", preset="tiny", out=out, steps=2,
                      overrides={**TINY, "validation_fraction": "0.34"}, progress=False)
    report = evaluate_world_model(out, batches=1)
    from PIL import Image

    strip = Image.open(report["strip_path"])
    assert strip.size == (2 * 15 * 64, 2 * 2 * 64)  # 15 frames wide, truth over prediction, shown at 2x


def test_a_pixel_dataset_read_from_disk_trains(tmp_path, monkeypatch):
    """Pixel datasets above the in-memory limit (``--memory-budget``) are sampled from disk;
    training on one must not need their frames in memory (it once computed observation statistics from
    them, which failed for out-of-core data and took a float64 copy of in-memory data)."""
    import gymnasium as gym
    import numpy as np

    from wmil.data import load
    from wmil.data.storage import DatasetWriter, Episode

    monkeypatch.setattr("wmil.data.dataset.IN_MEMORY_BYTES", None)  # restored after the test
    rng = np.random.default_rng(0)
    with DatasetWriter("px/disk-v0", gym.spaces.Box(0, 255, (1, 64, 64), np.uint8), gym.spaces.Discrete(3)) as w:
        for e in range(3):
            truncs = np.zeros(12, bool)
            truncs[-1] = True
            w.add(Episode(rng.integers(0, 256, (13, 1, 64, 64), dtype=np.uint8), rng.integers(0, 3, 12),
                          np.zeros(12, np.float32), np.zeros(12, bool), truncs, seed=e))
    assert load("px/disk-v0").aligned.obs is not None, "3 × 13 frames fit the default budget"
    args = ["train-model", "--dataset", "px/disk-v0", "--preset", "tiny", "--steps", "2", "--quiet", "--device",
            "cpu", "--out", str(tmp_path / "px")] + [a for k, v in {**TINY, "batch_size": "2"}.items()
                                                      for a in ("-o", f"{k}={v}")]
    assert wmil_main(args + ["--memory-budget", "0"]) == 0
    assert load("px/disk-v0").aligned.obs is None, "the frames must be read from disk"
    last = RunDir(tmp_path / "px", "world_model").read_metrics()[-1]
    assert np.isfinite(last["loss/total"])
    assert wmil_main(args + ["--memory-budget", "lots"]) == 2


def test_a_vector_dataset_read_from_disk_trains_with_the_same_statistics(world, tmp_path, monkeypatch):
    """Above the memory budget vector observations are read from disk too: the model's
    standardisation (accumulated episode by episode) equals the in-memory one, and it trains."""
    from wmil.data import load
    from wmil.data.dataset import set_memory_budget

    monkeypatch.setattr("wmil.data.dataset.IN_MEMORY_BYTES", None)  # restored after the test
    kw = dict(model="rssm", preset="tiny", steps=2, overrides=TINY, progress=False, device="cpu")
    ram = train_world_model(world, out=tmp_path / "ram", **kw)
    set_memory_budget(0)
    disk_set = load("wm/world-v0")
    assert disk_set.aligned.obs is None
    disk = train_world_model(disk_set, out=tmp_path / "disk", **kw)
    torch.testing.assert_close(disk.obs_mean, ram.obs_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(disk.obs_std, ram.obs_std, rtol=1e-5, atol=1e-6)
    for key, value in ram.state_dict().items():  # same batches from disk as from RAM: the same steps
        torch.testing.assert_close(disk.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_dataset_weights_set_each_datasets_share_of_a_batch(write_dataset, tmp_path):
    from wmil.data.dataset import MixedSampler

    a = write_dataset("mix/a-v0", [20, 20, 20, 20])   # 4× the windows of b
    b = write_dataset("mix/b-v0", [20])
    for weights, share_b in ((None, 0.2), ((1.0, 3.0), 0.75), ((1.0, 0.0), 0.0)):
        sampler = MixedSampler([a, b], 16, 8, seed=0, weights=weights)
        rows_b = 0
        for _ in range(300):
            sampler.sample()
            rows_b += int(sampler.last_counts[1])
        assert rows_b / (300 * 16) == pytest.approx(share_b, abs=0.02), weights
    kw = dict(model="rssm", preset="tiny", steps=1, progress=False, device="cpu")
    train_world_model([a, b], out=tmp_path / "w", overrides={**TINY, "dataset_weights": "0.5,0.5"}, **kw)
    with pytest.raises(UserError, match=r"train.dataset_weights has 3 values for 2 datasets \(mix/a-v0, mix/b-v0\)"):
        train_world_model([a, b], out=tmp_path / "x", overrides={**TINY, "dataset_weights": "1,1,1"}, **kw)
    with pytest.raises(UserError, match="weights must be >= 0 with a positive one"):
        train_world_model([a, b], out=tmp_path / "y", overrides={**TINY, "dataset_weights": "0,0"}, **kw)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists(), "nothing is written"


def test_init_from_starts_from_another_runs_parameters_and_adds_a_head(world, tmp_path, capsys):
    """``init_from``: the new run starts with the source's tensors and a fresh continue head,
    records where it came from, resumes without the flag, and refuses a source that does not fit."""
    from wmil.train.world_model import warm_start
    from wmil.types import DataSpec
    from wmil.world_models import config_for, make_world_model

    kw = dict(model="rssm", preset="tiny", progress=False, device="cpu")
    source = load_world_model(train_world_model(world, out=tmp_path / "a", steps=3, overrides=TINY, **kw).run_dir)
    spec = DataSpec.from_dict(source.run_config["spec"])
    config = {"model": "rssm", "spec": source.run_config["spec"]}
    fresh = make_world_model("rssm", spec, config_for("rssm", "tiny", continue_head=True))
    added = warm_start(fresh, source, config)
    assert added and all(name.startswith("cont.") for name in added)
    theirs = source.state_dict()
    for name, value in fresh.state_dict().items():
        if name in theirs:
            assert torch.equal(value, theirs[name]), name

    head = {**TINY, "continue_head": "true", "continue_input": "deter"}
    out = tmp_path / "b"
    trained = train_world_model(world, out=out, steps=2, overrides=head, init_from=tmp_path / "a", **kw)
    assert "new parameters: cont." in capsys.readouterr().err
    recorded = RunDir(out, "world_model").read_config()["init_from"]
    assert recorded == {"run": str(tmp_path / "a"), "step": 3, "fingerprint": source.fingerprint}
    assert trained.continue_prob(trained.initial(2)).shape == (2,)
    resumed = train_world_model(world, out=out, steps=4, overrides=head, **kw)  # no init_from: it resumes
    assert load_world_model(out).checkpoint_step == 4 and "cont.net.0.weight" in resumed.state_dict()

    for model, extra, message in (("dynamics", {}, "its model is 'rssm'"), ("rssm", {"deter": "24"}, "sizes differ")):
        refused = tmp_path / f"x-{model}-{len(extra)}"
        with pytest.raises(UserError, match=message):
            train_world_model(world, model=model, preset="tiny", out=refused, steps=1,
                              overrides={**TINY, **extra}, progress=False, device="cpu", init_from=tmp_path / "a")
        assert not refused.exists()  # refused before anything is written
    with_reward = train_world_model(world, out=tmp_path / "r", steps=1, overrides={**TINY, "reward_head": "true"}, **kw)
    with pytest.raises(UserError, match="has no reward"):
        train_world_model(world, out=tmp_path / "x-r", steps=1, overrides=TINY, init_from=with_reward.run_dir, **kw)
    assert not (tmp_path / "x-r").exists()


def test_end_windows_draw_that_share_of_windows_ending_where_an_episode_terminates(write_dataset, tmp_path):
    """``end_windows=f``: round(f·B) windows of each batch end at a terminated episode's last
    observation (its terminal flag on the window's last step); 0 draws as before."""
    from wmil.data.dataset import MixedSampler

    data = write_dataset("ew/world-v0", [12, 15, 9, 20, 11, 14], discrete=True)
    ends = lambda batch: batch.is_terminal[:, -1]
    plain = MixedSampler([data], 16, 8, seed=0)
    assert float(ends(plain.sample()).float().mean()) < 0.5
    reference = MixedSampler([data], 16, 8, seed=0, end_share=0.0).sample()
    torch.testing.assert_close(reference.obs, MixedSampler([data], 16, 8, seed=0).sample().obs)
    sampler = MixedSampler([data], 16, 8, seed=0, end_share=0.25)
    for _ in range(5):
        batch = sampler.sample()
        assert ends(batch)[:4].all()
        assert batch.is_first[:, 0].sum() < 16  # still windows, not whole episodes
    trained = train_world_model(data, model="rssm", preset="tiny", out=tmp_path / "e", steps=2,
                                overrides={**TINY, "end_windows": "0.5"}, progress=False, device="cpu")
    assert RunDir(trained.run_dir, "world_model").read_config()["train"]["end_windows"] == 0.5
