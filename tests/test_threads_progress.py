"""Thread count (default, --threads, WMIL_NUM_THREADS), the collapse warning, off-terminal progress."""

from __future__ import annotations

import functools
import time

import pytest
import torch

from cli.main import main as wmil_main
from wmil import threads as wt
from wmil.errors import UserError
from wmil.progress import LineProgress, progress_bar
from wmil.runs import RunDir
from wmil.train import loop


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_precedence_argument_then_env_then_default(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv(wt.ENV_VAR, "2")
    assert wt.configure_threads(1) == 1 and torch.get_num_threads() == 1   # the argument wins
    assert wt.configure_threads() == 2 and torch.get_num_threads() == 2    # then WMIL_NUM_THREADS
    monkeypatch.delenv(wt.ENV_VAR)
    monkeypatch.setattr(wt, "available_cores", lambda: 2)
    torch.set_num_threads(2)  # torch's own default on 2 cores: nobody chose it
    assert wt.configure_threads() == wt.DEFAULT_THREADS == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(3)  # a count the user set with torch.set_num_threads is left alone
    assert wt.configure_threads() == 3


def test_bad_thread_counts_are_one_line_errors(monkeypatch):
    monkeypatch.setenv(wt.ENV_VAR, "two")
    with pytest.raises(UserError, match="WMIL_NUM_THREADS='two'"):
        wt.configure_threads()
    with pytest.raises(UserError, match=">= 1"):
        wt.set_threads(0)


def test_use_threads_exports_the_count_and_passive_waiting(monkeypatch):
    import os

    monkeypatch.setattr(os, "environ", {})
    wt.use_threads(1)
    assert os.environ == {wt.ENV_VAR: "1"}  # one thread: no OpenMP barrier to wait at
    wt.use_threads(2)
    assert os.environ == {wt.ENV_VAR: "2", "OMP_WAIT_POLICY": "PASSIVE"}
    os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
    wt.use_threads(4)
    assert os.environ == {wt.ENV_VAR: "4", "OMP_WAIT_POLICY": "ACTIVE"}  # the user's choice stays


def test_threads_flag_on_every_training_and_evaluation_command(monkeypatch, capsys):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # restored after the test
    for command in ("build-dataset", "train-model", "evaluate-model", "imagine", "evaluate"):
        assert wmil_main([command, "--help"]) == 0
        assert "--threads" in capsys.readouterr().out, command
    monkeypatch.setenv(wt.ENV_VAR, "1")
    # The flag is applied before the command runs (here it then fails on a missing run dir).
    assert wmil_main(["evaluate-model", "no-such-run", "--threads", "3"]) == 2
    import os

    assert os.environ[wt.ENV_VAR] == "3"
    assert wmil_main(["evaluate-model", "no-such-run", "--threads", "0"]) == 2
    assert "0 is not in the range x>=1" in capsys.readouterr().err


def test_rate_watch_warns_once_on_a_collapse_and_names_the_fix():
    watch = wt.RateWatch(fraction=0.25, min_seconds=1.0, min_updates=5, patience=2)
    assert watch.observe(20, 1.0, threads=2) is None           # 20 upd/s: the best window
    assert watch.observe(2, 1.0, threads=2) is None            # one slow window: an evaluation, maybe
    assert watch.observe(20, 1.0, threads=2) is None           # recovered
    assert watch.observe(2, 1.0, threads=2) is None
    message = watch.observe(1, 3.0, threads=2)                 # twice in a row: a collapse
    assert message is not None and "--threads 1" in message and "20" in message
    assert watch.observe(1, 3.0, threads=2) is None            # said once
    single = wt.RateWatch()
    for updates, seconds in [(20, 1.0), (1, 2.0), (1, 2.0)]:
        said = single.observe(updates, seconds, threads=1)
    assert said is not None and "--threads" not in said


def test_rate_watch_ignores_short_noisy_windows():
    watch = wt.RateWatch(min_seconds=1.0, min_updates=5)
    assert watch.observe(2, 0.001, threads=2) is None  # 2 updates: too few to set the best rate
    assert watch.best == 0.0
    watch.observe(50, 0.5, threads=2)
    for _ in range(5):
        assert watch.observe(2, 0.5, threads=2) is None  # slow but short: not counted


def test_training_loop_prints_the_collapse_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "RateWatch", functools.partial(wt.RateWatch, min_seconds=0.05))
    monkeypatch.setattr(loop, "_torch_threads", lambda: 2)
    run = RunDir(tmp_path / "run", "world_model")
    run.write_config({})

    def update(step):
        if step > 10:
            time.sleep(0.03)  # 10× slower from step 11 on
        return {"loss/total": 1.0}

    config = loop.LoopConfig(steps=20, log_every=5, eval_every=100, checkpoint_every=100)
    loop.run_loop(run, config, 0, update, None, lambda: {"x": torch.zeros(1)}, progress=False)
    err = capsys.readouterr().err
    assert err.count("warning: updates/s fell") == 1 and "--threads 1" in err


def test_off_terminal_progress_prints_lines(capsys):
    bar = progress_bar(10, "train rssm", unit="upd")  # pytest's stderr is not a terminal
    assert isinstance(bar, LineProgress)
    bar.interval = 0.0
    bar.set_postfix({"loss": "0.5"}, refresh=False)
    bar.update(4)
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("train rssm: 4/10 upd (40%)") and "loss=0.5" in lines[0] and "eta" in lines[0]
    assert len(lines) == 1  # close() repeats nothing already printed


def test_line_progress_waits_for_its_interval(capsys):
    bar = LineProgress(100, "imagine ditto", "upd", interval=3600)
    for _ in range(50):
        bar.update()
    assert capsys.readouterr().err == ""
    bar.close()  # the final line always comes
    assert capsys.readouterr().err.startswith("imagine ditto: 50/100 upd (50%)")
