"""Data-parallel training under torchrun (wmil.distributed): for a world model and an imagination
learner, 2 CPU processes with B/2 rows each take the same steps as 1 process with B rows; runs
resume across process counts; algorithms that cannot run data-parallel say so in one line."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wmil.distributed import Group
from wmil.errors import UserError
from wmil.runs import RunDir
from wmil.train.policy import train_policy
from wmil.train.world_model import train_world_model

ROOT = Path(__file__).resolve().parent.parent
# Windows of 8 inside episodes of 12+ steps: no right padding, so the ranks' mean losses
# average to the full batch's mean exactly (see wmil.distributed).
TINY = {"log_every": "1", "eval_every": "100", "checkpoint_every": "3", "batch_size": "4", "seq_len": "8",
        "open_loop_context": "3", "eval_batches": "1"}


@pytest.fixture
def world(write_dataset):
    return write_dataset("dp/world-v0", [12, 15, 13, 20, 16, 14], discrete=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: What a worker printed when it aborted inside gloo's teardown at exit, after its work (about one
#: launch in thirty on these machines).
TEARDOWN_ABORT = "terminate called without an active exception"


def _torchrun(n: int, args: list[str]) -> subprocess.CompletedProcess:
    """Launch ``wmil <args>`` on ``n`` processes. A launch that failed only by gloo's teardown
    abort is run again once: the same command resumes the run from its last checkpoint
    (exactly, so the comparisons below still hold) or finds it complete."""
    env = {**os.environ, "WMIL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for _ in range(2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr",
                   "127.0.0.1", "--master-port", str(_free_port()), "-m", "cli.main", *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        if done.returncode == 0 or TEARDOWN_ABORT not in done.stderr:
            break
    return done


def _weights(out: Path) -> dict:
    return RunDir(out, "world_model").load_checkpoint()["model"]


def _args(out: Path, model: str, steps: int) -> list[str]:
    args = ["train-model", "--dataset", "dp/world-v0", "--model", model, "--preset", "tiny", "--steps", str(steps),
            "--seed", "3", "--device", "cpu", "--quiet", "--out", str(out)]
    return args + [a for k, v in TINY.items() for a in ("-o", f"{k}={v}")]


# The two equivalence tests run in the default suite (a torchrun launch each, ~10 s); the
# resume tests, two more launches, under `-m slow`.
def test_two_processes_take_the_steps_of_one_with_the_whole_batch(world, tmp_path):
    """``dynamics`` (no latent noise): after 6 updates of Adam the parameters of 2 processes × 2
    rows equal those of 1 process × 4 rows to float32 rounding, and differ from the start."""
    one = train_world_model(world, model="dynamics", preset="tiny", out=tmp_path / "one", steps=6, seed=3,
                            overrides=TINY, progress=False, device="cpu")
    done = _torchrun(2, _args(tmp_path / "two", "dynamics", 6))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained dynamics") == 1, "only rank 0 reports"
    run = RunDir(tmp_path / "two", "world_model")
    two = _weights(tmp_path / "two")
    halfway = run.load_checkpoint(run.checkpoints()[0])["model"]  # step 3
    moved = 0.0
    for name, value in one.state_dict().items():
        torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-6, msg=name)
        if value.is_floating_point():
            moved = max(moved, float((value - halfway[name]).abs().max()))
    assert moved > 1e-4, "the last three updates must move the parameters far beyond the tolerance"
    config = RunDir(tmp_path / "two", "world_model").read_config()
    assert config["world_size"] == 2 and config["train"]["batch_size"] == 4
    metrics = RunDir(tmp_path / "two", "world_model").read_metrics()
    assert [m["step"] for m in metrics if "loss/total" in m] == [1, 2, 3, 4, 5, 6], "one row per step, rank 0 only"


@pytest.mark.slow
def test_an_rssm_run_resumes_with_another_number_of_processes(world, tmp_path):
    out = tmp_path / "rssm"
    done = _torchrun(2, _args(out, "rssm", 3))
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = train_world_model(world, model="rssm", preset="tiny", out=out, steps=5, seed=3, overrides=TINY,
                                progress=False, device="cpu")
    run = RunDir(out, "world_model")
    assert [m["step"] for m in run.read_metrics() if "loss/total" in m] == [1, 2, 3, 4, 5]
    assert run.read_config()["history"][-1]["changed"]["world_size"] == [2, 1]
    assert all(torch.isfinite(v).all() for v in resumed.state_dict().values() if v.is_floating_point())


def test_a_batch_that_does_not_split_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    group = Group(torch.device("cpu"))
    group.size = 3
    with pytest.raises(UserError, match=r"train.batch_size=16 does not split over 3 processes; choose a multiple of 3"):
        group.check_batch(16, "train.batch_size")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(UserError, match="RANK=5, WORLD_SIZE=2"):
        Group(torch.device("cpu"))


POLICY = {"log_every": "1", "eval_every": "100", "checkpoint_every": "3", "batch_size": "8", "horizon": "3",
          "eval_starts": "8"}


#: VINS has no imagined rollouts: no horizon, no latent-distance starts.
BATCH_ONLY = {k: v for k, v in POLICY.items() if k not in ("horizon", "eval_starts")}


def _imagine_args(algo: str, wm: Path, out: Path, steps: int) -> list[str]:
    args = ["imagine", "--algo", algo, "--model", str(wm), "--expert", "dp/expert-v0", "--preset", "tiny",
            "--steps", str(steps), "--seed", "4", "--device", "cpu", "--quiet", "--out", str(out)]
    return args + [a for k, v in (BATCH_ONLY if algo == "vins" else POLICY).items() for a in ("-o", f"{k}={v}")]


@pytest.fixture
def learner_world(world, write_dataset, tmp_path):
    """A tiny rssm on the world data and an expert dataset, for the imagination learners."""
    write_dataset("dp/expert-v0", [11, 13, 12], discrete=True)
    wm = tmp_path / "wm"
    train_world_model(world, model="rssm", preset="tiny", out=wm, steps=2, seed=3, overrides=TINY, progress=False,
                      device="cpu")
    return wm


def test_two_processes_train_a_learner_as_one_with_the_whole_batch(learner_world, tmp_path):
    """D-BC (no sampling noise in its update: expert rows, E[z] features, exact entropy): after 6
    Adam steps the actor of 2 processes × 4 rows equals that of 1 process × 8 rows to float32
    rounding, and has moved well beyond that tolerance."""
    train_policy("dbc", learner_world, "dp/expert-v0", out=tmp_path / "one", preset="tiny", steps=6, seed=4,
                 overrides=POLICY, progress=False, device="cpu")
    done = _torchrun(2, _imagine_args("dbc", learner_world, tmp_path / "two", 6))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained dbc policy") == 1, "only rank 0 reports"
    one = RunDir(tmp_path / "one", "policy").load_checkpoint()["algo"]["networks"]
    run = RunDir(tmp_path / "two", "policy")
    two = run.load_checkpoint()["algo"]["networks"]
    halfway = run.load_checkpoint(run.checkpoints()[0])["algo"]["networks"]  # step 3
    moved = 0.0
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, float((value - halfway[name]).abs().max()))
    assert moved > 1e-4, "the last three updates must move the parameters far beyond the tolerance"
    assert run.read_config()["world_size"] == 2
    rows = [m for m in run.read_metrics() if "loss/bc" in m]
    assert [m["step"] for m in rows] == [1, 2, 3, 4, 5, 6], "one row per step, rank 0 only"
    singles = [m for m in RunDir(tmp_path / "one", "policy").read_metrics() if "loss/bc" in m]
    for a, b in zip(singles, rows):  # the logged loss is the ranks' mean: the whole batch's
        assert b["loss/bc"] == pytest.approx(a["loss/bc"], rel=1e-4)


@pytest.mark.slow
def test_ditto_trains_under_torchrun_and_resumes_in_one_process(learner_world, tmp_path):
    out = tmp_path / "ditto"
    done = _torchrun(2, _imagine_args("ditto", learner_world, out, 3))
    assert done.returncode == 0, done.stderr[-3000:]
    train_policy("ditto", learner_world, "dp/expert-v0", out=out, preset="tiny", steps=5, seed=4, overrides=POLICY,
                 progress=False, device="cpu")
    run = RunDir(out, "policy")
    assert [m["step"] for m in run.read_metrics() if "loss/actor" in m] == [1, 2, 3, 4, 5]
    assert run.read_config()["history"][-1]["changed"]["world_size"] == [2, 1]


def test_an_algorithm_that_cannot_run_data_parallel_is_a_one_line_error(learner_world, tmp_path, monkeypatch):
    """Every built-in algorithm runs data-parallel; one that does not (a learner drawing its
    batches outside the sharded samplers) is refused before anything is written, as is a
    setting that cannot work distributed (early stopping decided on rank 0 alone)."""
    from wmil.algos.gpril import Gpril

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(Gpril, "data_parallel", False)
    with pytest.raises(UserError, match=r"--algo gpril does not run data-parallel .* \(data-parallel: bc, dbc, "
                                        r"dgail, ditto, sqil, vins\)"):
        train_policy("gpril", learner_world, "dp/expert-v0", out=tmp_path / "gpril", preset="tiny", steps=2,
                     overrides=POLICY, progress=False, device="cpu")
    assert not (tmp_path / "gpril").exists(), "nothing is written"
    for algo in ("bc", "vins"):
        with pytest.raises(UserError, match=rf"--algo {algo} under torchrun: patience=3 stops on rank 0's "
                                            r"evaluations alone; use -o patience=0"):
            train_policy(algo, learner_world, "dp/expert-v0", out=tmp_path / algo, preset="tiny", steps=2,
                         overrides={"patience": "3"}, progress=False, device="cpu")
        assert not (tmp_path / algo).exists(), "nothing is written"


def test_two_processes_train_bc_as_one_with_the_whole_batch(learner_world, tmp_path):
    """Behaviour cloning (no sampling noise in its update): after 6 Adam steps the network of 2
    processes × 4 rows equals that of 1 process × 8 rows to float32 rounding; only rank 0 writes
    and evaluates (held-out episodes, model selection)."""
    overrides = {"log_every": "1", "eval_every": "3", "checkpoint_every": "3", "batch_size": "8"}
    args = ["imagine", "--algo", "bc", "--expert", "dp/expert-v0", "--preset", "tiny", "--steps", "6", "--seed", "4",
            "--device", "cpu", "--quiet", "--out", str(tmp_path / "two")]
    train_policy("bc", None, "dp/expert-v0", out=tmp_path / "one", preset="tiny", steps=6, seed=4,
                 overrides=overrides, progress=False, device="cpu")
    done = _torchrun(2, args + [a for k, v in overrides.items() for a in ("-o", f"{k}={v}")])
    assert done.returncode == 0, done.stderr[-3000:]
    one = RunDir(tmp_path / "one", "policy").load_checkpoint()["algo"]
    run = RunDir(tmp_path / "two", "policy")
    two, halfway = run.load_checkpoint()["algo"], run.load_checkpoint(run.checkpoints()[0])["algo"]
    moved = 0.0
    for name, value in one["networks"].items():
        torch.testing.assert_close(two["networks"][name], value, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, float((value - halfway["networks"][name]).abs().max()))
    assert moved > 1e-4, "the last three updates must move the parameters far beyond the tolerance"
    assert two["selections"]["policy"]["best_step"] == one["selections"]["policy"]["best_step"]
    assert [m["step"] for m in run.read_metrics() if "eval/val_loss" in m] == [3, 6], "rank 0 evaluates, once"


def test_each_process_takes_its_block_of_the_same_global_draw(learner_world):
    """The samplers shard: rank r of N gets rows [r·B/N, (r+1)·B/N) of the draw one process makes
    from the same generator state (starts, expert rows, expert windows)."""
    from types import SimpleNamespace

    from wmil.algos.base import algorithm_class
    from wmil.config import build_config
    from wmil.data import load
    from wmil.train.world_model import load_world_model

    model = load_world_model(learner_world)
    cls = algorithm_class("dgail")
    config = build_config(cls.config_cls, "tiny", {"batch_size": "8", "horizon": "3", "starts": "mixed"}, "dgail")
    learners = []
    for rank, size in ((0, 1), (0, 2), (1, 2)):
        torch.manual_seed(0)
        learner = cls(model, load("dp/expert-v0"), config, torch.device("cpu"))
        learner.group = None if size == 1 else SimpleNamespace(rank=rank, size=size)
        learners.append(learner)
    draws = [(lr.expert_rows(8), lr.start_states(8, lr.starts).deter, lr.sample_starts()[1]) for lr in learners]
    whole, first, second = draws
    torch.testing.assert_close(torch.cat([first[0], second[0]]), whole[0])
    # mixed starts: each half (expert, world) is sharded on its own
    torch.testing.assert_close(torch.cat([first[1][:2], second[1][:2], first[1][2:], second[1][2:]]), whole[1])
    torch.testing.assert_close(torch.cat([first[2], second[2]], 1), whole[2])
    assert first[0].shape[0] == 4 and first[2].shape[1] == 4


@pytest.mark.slow
@pytest.mark.parametrize("algo, key", [("sqil", "loss/q"), ("dgail", "loss/discriminator"), ("gpril", "loss/flow_state"),
                                       ("vins", "loss/td")])
def test_other_data_parallel_learners_train_under_torchrun(learner_world, tmp_path, algo, key):
    out = tmp_path / algo
    done = _torchrun(2, _imagine_args(algo, learner_world, out, 3))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [m for m in RunDir(out, "policy").read_metrics() if key in m]
    assert [m["step"] for m in rows] == [1, 2, 3]


def test_gpril_processes_take_their_block_of_the_same_triples(learner_world):
    """GPRIL on the offline data (the same for every process): rank r's triples are rows
    [r·B/N, (r+1)·B/N) of those one process draws, and the generator advances alike."""
    from types import SimpleNamespace

    from wmil.algos.base import algorithm_class
    from wmil.config import build_config
    from wmil.data import load
    from wmil.train.world_model import load_world_model

    model = load_world_model(learner_world)
    cls = algorithm_class("gpril")
    config = build_config(cls.config_cls, "tiny", {"batch_size": "8", "predecessors": "data"}, "gpril")
    draws = []
    for rank, size in ((0, 1), (0, 2), (1, 2)):
        torch.manual_seed(0)
        learner = cls(model, load("dp/expert-v0"), config, torch.device("cpu"))
        learner.group = None if size == 1 else SimpleNamespace(rank=rank, size=size)
        draws.append((learner.triples(8), learner.triples(8), learner.rng.random()))
    whole, first, second = draws
    for k in range(2):
        for part in range(3):
            torch.testing.assert_close(torch.cat([first[k][part], second[k][part]]), whole[k][part])
    assert first[0].state.shape[0] == 4 and whole[2] == first[2] == second[2]
    with learner.whole_batches():
        assert learner.triples(8).state.shape[0] == 8, "evaluations draw the whole batch"
