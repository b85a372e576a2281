"""Run directories under concurrency, extension, damage and crashes: the lock, the config check
on resume, the history of extensions, the world model's fingerprint, damaged checkpoints,
TensorBoard without duplicate steps, torn metrics lines, and a kill -9 resumed bit-identically."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
import yaml

import wmil
from wmil.errors import UserError, WmilWarning
from wmil.runs import RunDir
from wmil.train.world_model import train_world_model

WM = {"log_every": "1", "eval_every": "100", "checkpoint_every": "1", "batch_size": "4", "seq_len": "8",
      "open_loop_context": "3", "eval_batches": "1"}
AC = {"log_every": "1", "eval_every": "4", "checkpoint_every": "2", "batch_size": "8", "horizon": "3",
      "eval_starts": "8"}


@pytest.fixture
def world(write_dataset):
    return write_dataset("rd/world-v0", [12, 14, 16, 11])


def train(world, out, steps, **kw):
    return train_world_model(world, model="rssm", preset="tiny", out=out, steps=steps, overrides={**WM, **kw.pop("o", {})},
                             progress=False, device="cpu", **kw)


def same_parameters(a, b):
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=0, msg=key)


def strip(records):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


# ---- the lock ------------------------------------------------------------------------------------------
def test_a_second_process_is_refused_and_a_dead_ones_lock_is_taken_over(world, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom wmil.runs import RunDir\n"
                               "RunDir(sys.argv[1], 'world_model').acquire()\nprint('locked', flush=True)\ntime.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"{out} is in use by pid {holder.pid} \(another wmil process"):
            train(world, out, 2)
        assert not (out / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train(world, out, 2)  # the dead process's lock is taken over
    assert RunDir(out, "world_model").checkpoints()[-1].name == "step_00000002.pt"


def test_stale_temporaries_are_removed_and_names_are_unique(world, tmp_path):
    out = tmp_path / "run"
    train(world, out, 1)
    stale = out / "checkpoints" / ".step_00000002.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(world, out, 2)
    assert not stale.exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001.pt", "step_00000002.pt"]


# ---- resume: config, extension, completion ---------------------------------------------------------------
def test_resume_names_only_the_fields_that_differ(world, tmp_path):
    out = tmp_path / "run"
    train(world, out, 2)
    with pytest.raises(UserError) as info:
        train(world, out, 3, seed=5)
    message = str(info.value)
    assert "different train.seed (0 → 5); resume with the same settings" in message
    assert "model_config" not in message and "\n" not in message
    with pytest.raises(UserError, match=r"different train.batch_size \(4 → 5\), train.seq_len \(8 → 9\);"):
        train(world, out, 3, o={"batch_size": "5", "seq_len": "9"})


def test_extending_a_run_keeps_config_true_and_says_when_complete(world, tmp_path):
    out = tmp_path / "run"
    train(world, out, 2)
    train(world, out, 4)
    config = RunDir(out, "world_model").read_config()
    assert config["train"]["steps"] == 4
    assert config["history"] == [{"at_step": 2, "wmil_version": wmil.__version__, "changed": {"train.steps": [2, 4]}}]
    with pytest.warns(WmilWarning, match=r"already complete \(step 4 of 4\); nothing to train"):
        train(world, out, 4)
    with pytest.raises(UserError, match="already trained to step 4, past --steps 3"):
        train(world, out, 3)
    assert RunDir(out, "world_model").read_config()["train"]["steps"] == 4
    train(world, out, 5)  # the lock was released by the complete run: nothing blocks the next one


def test_cli_extension_and_completion_messages(world, tmp_path, capsys):
    from cli.main import main

    out = tmp_path / "run"
    args = ["train-model", "--dataset", "rd/world-v0", "--preset", "tiny", "--out", str(out), "--quiet", "--device",
            "cpu", *[a for k, v in WM.items() for a in ("-o", f"{k}={v}")]]
    assert main(args + ["--steps", "2"]) == 0
    capsys.readouterr()
    assert main(args + ["--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "already complete" in err and err.count("\n") == 1


def test_a_failed_start_does_not_block_the_corrected_command(world, write_dataset, tmp_path):
    expert = write_dataset("rd/expert-v0", [10, 9])
    wm = tmp_path / "wm"
    train(world, wm, 2)
    out = tmp_path / "policy"
    with pytest.raises(UserError, match="shorter than the imagination horizon"):
        wmil.train_policy("ditto", wm, expert, out=out, preset="tiny", overrides={**AC, "horizon": "30"},
                          progress=False, device="cpu")
    wmil.train_policy("ditto", wm, expert, out=out, preset="tiny", steps=2, overrides=AC, progress=False, device="cpu")
    assert RunDir(out, "policy").read_config()["algo_config"]["horizon"] == 3


def test_imagination_runs_notice_a_world_model_trained_further(world, write_dataset, tmp_path):
    expert = write_dataset("rd/expert-v0", [10, 9])
    wm = tmp_path / "wm"
    train(world, wm, 2)
    out = tmp_path / "policy"
    wmil.train_policy("dbc", wm, expert, out=out, preset="tiny", steps=2, overrides=AC, progress=False, device="cpu")
    recorded = RunDir(out, "policy").read_config()["world_model_checkpoint"]
    assert recorded["step"] == 2 and len(recorded["sha256"]) == 64
    train(world, wm, 3)
    with pytest.raises(UserError, match=r"different world_model_checkpoint.step \(2 → 3\), world_model_checkpoint.sha256 "
                                        r".*\(the world model was trained further or replaced"):
        wmil.train_policy("dbc", wm, expert, out=out, preset="tiny", steps=4, overrides=AC, progress=False,
                          device="cpu")


# ---- damage ------------------------------------------------------------------------------------------------
def test_resume_falls_back_to_the_newest_readable_checkpoint(world, tmp_path):
    full = train(world, tmp_path / "full", 5)
    out = tmp_path / "part"
    train(world, out, 3)
    newest = RunDir(out, "world_model").checkpoints()[-1]
    newest.write_bytes(newest.read_bytes()[:500])
    with pytest.warns(WmilWarning, match=r"skipped damaged checkpoint\(s\) step_00000003.pt .*resuming from step_00000002.pt"):
        resumed = train(world, out, 5)
    same_parameters(full, resumed)
    assert strip(RunDir(out, "world_model").read_metrics()) == strip(RunDir(tmp_path / "full", "world_model").read_metrics())
    # Loading for use does not fall back silently: it names the way out.
    newest = RunDir(out, "world_model").checkpoints()[-1]
    newest.write_bytes(newest.read_bytes()[:500])
    with pytest.raises(UserError, match="step_00000005.pt: checkpoint is truncated or corrupted .*delete it to use the "
                                        r"previous one \(step_00000004.pt\)"):
        wmil.load_world_model(out)


def _scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == tag:
                    steps.append(event.step)
    return steps


def test_tensorboard_and_metrics_hold_each_step_once_after_resume(world, tmp_path):
    out = tmp_path / "run"
    train(world, out, 4)
    # As a kill leaves it: metrics logged past the last checkpoint, a torn last line.
    for p in RunDir(out, "world_model").checkpoints()[-2:]:
        p.unlink()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss/to')
    with pytest.warns(WmilWarning, match="metrics.jsonl: skipped unreadable line"):
        train(world, out, 6)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert sorted(_scalars(out, "loss/total")) == [1, 2, 3, 4, 5, 6]


def test_a_config_missing_a_field_is_named(world, tmp_path):
    out = tmp_path / "run"
    train(world, out, 2)
    config = yaml.safe_load((out / "config.yaml").read_text())
    del config["spec"]
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match="config.yaml: field 'spec' missing"):
        wmil.load_world_model(out)


# ---- kill -9 -------------------------------------------------------------------------------------------------
def test_kill_9_mid_run_resumes_bit_identically(world, tmp_path, minari_root):
    """One kill at a random-ish moment (after the second checkpoint); benchmarks/faults.py does many."""
    full = train(world, tmp_path / "full", 30)
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "cli.main", "train-model", "--dataset", "rd/world-v0", "--preset", "tiny", "--steps",
            "30", "--out", str(out), "--quiet", "--device", "cpu", *[a for k, v in WM.items() for a in ("-o", f"{k}={v}")]]
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root), "WMIL_NUM_THREADS": "1"}
    process = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step_00000002.pt").exists() and time.time() < deadline:
        if process.poll() is not None:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert RunDir(out, "world_model").checkpoints()[-1].name < "step_00000030.pt"  # killed mid-run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WmilWarning)  # a torn metrics line, if the kill tore one
        resumed = train(world, out, 30)
    same_parameters(full, resumed)
    assert strip(RunDir(out, "world_model").read_metrics()) == strip(RunDir(tmp_path / "full", "world_model").read_metrics())
