"""Loading a file never runs code from it: a pickle payload planted in a checkpoint (every
load path) or in a torch.export policy is refused with one line, and never runs."""

import io
import zipfile

import numpy as np
import pytest
import torch

import wmil
from cli.main import main as wmil_main
from wmil.errors import UserError
from wmil.runs import RunDir
from wmil.train.world_model import train_world_model

WM = {"log_every": "2", "eval_every": "100", "checkpoint_every": "100", "batch_size": "4", "seq_len": "8",
      "open_loop_context": "3", "eval_batches": "1"}
AC = {"log_every": "2", "eval_every": "4", "checkpoint_every": "3", "batch_size": "8", "horizon": "3",
      "eval_starts": "8"}


class Payload:
    """Unpickling this writes ``marker``: proof that the file's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def plant(checkpoint, marker):
    data = torch.load(checkpoint, weights_only=True)
    data["extra"] = Payload(marker)
    torch.save(data, checkpoint)


def overrides(pairs):
    return [a for k, v in pairs.items() for a in ("-o", f"{k}={v}")]


@pytest.fixture
def runs(tmp_path, write_dataset):
    world = write_dataset("sl/world-v0", [12, 14, 16, 11])
    expert = write_dataset("sl/expert-v0", [10, 9])
    wm = tmp_path / "wm"
    train_world_model(world, model="rssm", preset="tiny", out=wm, steps=3, overrides=WM, progress=False, device="cpu")
    policy = tmp_path / "policy"
    wmil.train_policy("ditto", wm, expert, out=policy, preset="tiny", steps=3, overrides=AC, progress=False,
                      device="cpu")
    return wm, policy


def _cli(args, capsys):
    code = wmil_main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


PATHS = ["evaluate", "load_policy", "load_world_model", "train-model resume", "imagine resume", "imagine --model",
         "evaluate-model"]


@pytest.mark.parametrize("path", PATHS)
def test_planted_payload_never_runs(runs, tmp_path, capsys, path):
    wm, policy = runs
    marker = tmp_path / "marker"
    target = policy if path in ("evaluate", "load_policy", "imagine resume") else wm
    plant(RunDir(target, "any").checkpoints()[-1], marker)
    if path == "load_policy":
        with pytest.raises(UserError) as info:
            wmil.load_policy(policy)
        message = str(info.value)
    elif path == "load_world_model":
        with pytest.raises(UserError) as info:
            wmil.load_world_model(wm)
        message = str(info.value)
    else:
        args = {
            "evaluate": ["evaluate", policy, "--episodes", "1", "--quiet", "--env", "CartPole-v1"],
            "train-model resume": ["train-model", "--dataset", "sl/world-v0", "--model", "rssm", "--preset", "tiny",
                                   "--steps", "6", "--out", wm, "--quiet", "--device", "cpu", *overrides(WM)],
            "imagine resume": ["imagine", "--algo", "ditto", "--model", wm, "--expert", "sl/expert-v0", "--preset",
                               "tiny", "--steps", "6", "--out", policy, "--quiet", "--device", "cpu", *overrides(AC)],
            "imagine --model": ["imagine", "--algo", "ditto", "--model", wm, "--expert", "sl/expert-v0", "--preset",
                                "tiny", "--steps", "2", "--out", tmp_path / "new", "--quiet", "--device", "cpu",
                                *overrides(AC)],
            "evaluate-model": ["evaluate-model", wm, "--batches", "1", "--context", "3"],
        }[path]
        code, message = _cli(args, capsys)
        assert code == 2 and message.startswith("error: ") and message.count("\n") == 1, message
    assert not marker.exists(), f"{path}: the planted payload ran"
    assert "\n" not in message.strip() and "--trust-checkpoint" in message and "can run code" in message
    assert not (tmp_path / "new").exists()  # a refused world model leaves no half-made policy run
    assert not (wm / "open_loop.json").exists() and not (policy / "evaluation.json").exists()


def test_the_payload_is_live_when_trusted(runs, tmp_path):
    """The planted object really is code: trust=True (which unpickles) runs it."""
    wm, _ = runs
    marker = tmp_path / "marker"
    plant(RunDir(wm, "world_model").checkpoints()[-1], marker)
    wmil.load_world_model(wm, trust=True)
    assert marker.read_text() == "ran"


def test_checkpoints_hold_only_tensors_and_plain_values(runs):
    """Every learner state and the random states load with weights_only=True (the default)."""
    wm, policy = runs
    for run in (wm, policy):
        for checkpoint in RunDir(run, "any").checkpoints():
            data = torch.load(checkpoint, weights_only=True)
            assert isinstance(data["rng"]["numpy"]["state"], torch.Tensor)


@pytest.mark.parametrize("algo", ["bc", "vins", "sqil", "gpril", "dbc", "dgail"])
def test_every_learner_state_loads_safely(tmp_path, write_dataset, algo):
    """BC's best-parameter dicts, ±inf scores, numpy Generator states (128-bit integers): all
    plain values. A resumed run continues from them."""
    world = write_dataset("sl/world-v0", [12, 14, 16, 11], discrete=False)
    expert = write_dataset("sl/expert-v0", [10, 9, 12], discrete=False)
    model = None
    if algo != "bc":
        model = tmp_path / "wm"
        kind = "dynamics" if algo == "vins" else "rssm"
        train_world_model(world, model=kind, preset="tiny", out=model, steps=2, overrides=WM, progress=False,
                          device="cpu")
    out = tmp_path / algo
    run_overrides = {"log_every": "1", "eval_every": "1", "checkpoint_every": "1"}
    wmil.train_policy(algo, model, expert, out=out, preset="tiny", steps=2, overrides=run_overrides, progress=False,
                      device="cpu")
    data = torch.load(RunDir(out, "policy").checkpoints()[-1], weights_only=True)
    assert data["step"] == 2
    wmil.train_policy(algo, model, expert, out=out, preset="tiny", steps=3, overrides=run_overrides, progress=False,
                      device="cpu")
    assert RunDir(out, "policy").checkpoints()[-1].name == "step_00000003.pt"
    wmil.load_policy(out)


def test_old_checkpoints_need_trust_and_then_resume_exactly(write_dataset, tmp_path, capsys):
    """A checkpoint with NumPy's random state pickled (as wmil wrote before) is refused with the
    way out; with --trust-checkpoint it resumes, bit-identical to an unbroken run."""
    world = write_dataset("sl/world-v0", [12, 14, 16, 11])
    full = train_world_model(world, model="rssm", preset="tiny", out=tmp_path / "full", steps=6, overrides=WM,
                             progress=False, device="cpu")
    part = tmp_path / "part"
    train_world_model(world, model="rssm", preset="tiny", out=part, steps=3, overrides=WM, progress=False, device="cpu")
    checkpoint = RunDir(part, "world_model").checkpoints()[-1]
    data = torch.load(checkpoint, weights_only=True)
    numpy = data["rng"]["numpy"]
    data["rng"]["numpy"] = (numpy["bit_generator"], numpy["state"].numpy().astype(np.uint32), numpy["pos"],
                            numpy["has_gauss"], numpy["cached_gaussian"])
    torch.save(data, checkpoint)
    args = ["train-model", "--dataset", "sl/world-v0", "--model", "rssm", "--preset", "tiny", "--steps", "6",
            "--out", str(part), "--quiet", "--device", "cpu", *overrides(WM)]
    code, err = _cli(args, capsys)
    assert code == 2 and err.count("\n") == 1 and "retrain, or if you trust" in err and "--trust-checkpoint" in err
    assert wmil_main(args + ["--trust-checkpoint"]) == 0
    resumed = wmil.load_world_model(part)
    for key, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


# ---- torch.export policies -------------------------------------------------------------------------
def _exported_policy(path):
    net = torch.nn.Linear(4, 2)
    torch.export.save(torch.export.export(net, (torch.zeros(1, 4),)), str(path))
    return path


def _replace_entry(src, dst, suffix, data):
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w") as out:
        for info in archive.infolist():
            out.writestr(info, data if info.filename.endswith(suffix) else archive.read(info.filename))
    return dst


def _payload_bytes(marker):
    buffer = io.BytesIO()
    torch.save(((Payload(marker),), {}), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("tamper", ["sample_inputs", "use_pickle", "aoti", "legacy_weights"])
def test_tampered_pt2_is_refused_before_anything_runs(tmp_path, minari_root, capsys, tamper):
    good = _exported_policy(tmp_path / "good.pt2")
    bad = tmp_path / "bad.pt2"
    marker = tmp_path / "marker"
    if tamper == "sample_inputs":  # torch itself falls back to unpickling this entry
        _replace_entry(good, bad, "data/sample_inputs/model.pt", _payload_bytes(marker))
    elif tamper == "use_pickle":
        with zipfile.ZipFile(good) as archive:
            name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
            config = archive.read(name).replace(b'"use_pickle": false', b'"use_pickle": true', 1)
        _replace_entry(good, bad, "model_weights_config.json", config)
    else:
        entry = "data/aotinductor/model/model.so" if tamper == "aoti" else "data/weights/model.pt"
        with zipfile.ZipFile(good) as archive, zipfile.ZipFile(bad, "w") as out:
            root = archive.namelist()[0].split("/")[0]
            for info in archive.infolist():
                out.writestr(info, archive.read(info.filename))
            out.writestr(f"{root}/{entry}", _payload_bytes(marker))
    args = ["build-dataset", "--name", "sl/pt2-v0", "--env", "CartPole-v1", "--policy", str(bad), "--episodes", "1",
            "--ref-episodes", "0", "--quiet"]
    code, err = _cli(args, capsys)
    assert code == 2 and err.startswith("error: policy") and err.count("\n") == 1, err
    assert "refused" in err and "can run code" in err
    assert not marker.exists()
    assert not (minari_root / "sl" / "pt2-v0").exists()
    # The untampered program records a dataset (the refusal is about the tampering).
    assert wmil_main(args[:6] + [str(good)] + args[7:]) == 0


def test_torch_itself_would_run_the_sample_inputs_payload(tmp_path):
    """Why the archive is checked before torch sees it: torch.export.load falls back to a full
    unpickle of the sample inputs (torch 2.13), so the tampered file above is a live exploit."""
    bad = _replace_entry(_exported_policy(tmp_path / "good.pt2"), tmp_path / "bad.pt2", "data/sample_inputs/model.pt",
                         _payload_bytes(tmp_path / "marker"))
    import logging

    logging.getLogger("torch._export").setLevel(logging.CRITICAL)
    try:
        torch.export.load(str(bad))
    except Exception:
        pass
    if not (tmp_path / "marker").exists():
        pytest.skip("this torch no longer unpickles a sample-inputs entry that fails the safe load")
