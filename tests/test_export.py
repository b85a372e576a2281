"""``wmil export``: the exported program acts as the in-process policy over a real episode, and it
loads in a Python process that never imports wmil."""

import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from cli.main import main as wmil_main
from wmil.train.policy import load_policy, train_policy

TINY = {"log_every": "2", "eval_every": "2", "checkpoint_every": "2", "batch_size": "8", "horizon": "3",
        "eval_starts": "8"}


def _train(env_worlds, tmp_path, algo, model, discrete):
    world = env_worlds(discrete)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(world.datasets))
        out = tmp_path / f"{algo}-{model}"
        overrides = TINY if model else {k: TINY[k] for k in ("log_every", "eval_every", "checkpoint_every")}
        train_policy(algo, world.model(model) if model else None, world.expert, out=out, preset="tiny", steps=2,
                     overrides=overrides, progress=False, device="cpu")
    return out


@pytest.mark.parametrize("algo,model,discrete", [("ditto", "rssm", True), ("dgail", "gaussian_rssm", False),
                                                  ("bc", None, True)])
def test_exported_policy_acts_as_the_policy_over_a_real_episode(env_worlds, tmp_path, algo, model, discrete):
    run = _train(env_worlds, tmp_path, algo, model, discrete)
    assert wmil_main(["export", str(run), "--out", str(tmp_path / "p.pt2")]) == 0
    meta = json.loads((tmp_path / "p.json").read_text())
    program = torch.export.load(tmp_path / "p.pt2").module()
    policy = load_policy(run)
    generator = torch.Generator().manual_seed(0)
    env = gym.make("CartPole-v1" if discrete else "Pendulum-v1")
    obs, _ = env.reset(seed=5)
    if model:
        size = meta["inputs"]["stoch"][0]
        noise = {"value": torch.zeros(1, size)}
        policy.world_model._noise = lambda shape: noise["value"].reshape(*shape, size)  # the same draws for both
        deter, stoch = torch.zeros(1, meta["inputs"]["deter"][0]), torch.zeros(1, size)
        prev = torch.zeros(1, meta["action_dim"])
    policy.reset()
    actions = []
    for t in range(40):
        x = torch.as_tensor(obs, dtype=torch.float32)[None]
        if model:
            noise["value"] = (torch.randn(1, size, generator=generator) if meta["noise"] == "normal"
                              else -torch.log(-torch.log(torch.rand(1, size, generator=generator).clamp(1e-6, 1 - 1e-6))))
            with torch.no_grad():
                action, prev, _, deter, stoch = program(x, deter, stoch, prev, torch.tensor([t == 0]), noise["value"])
        else:
            with torch.no_grad():
                action, _ = program(x)
        expected = policy.act(obs, deterministic=True)
        if model:  # the recurrent state itself, not only the (possibly constant) action, must agree
            torch.testing.assert_close(deter, policy.state.deter, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(stoch, policy.state.stoch, rtol=1e-5, atol=1e-6)
        got = int(action[0]) if discrete else action[0].numpy()
        if discrete:
            assert got == expected, f"step {t}"
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        actions.append(got)
        obs, _, terminated, truncated, _ = env.step(expected)
        if terminated or truncated:
            break
    assert len(actions) >= 8
    if model:
        assert float((deter - torch.zeros_like(deter)).abs().max()) > 1e-3


def test_the_export_loads_without_wmil_and_bad_requests_are_one_line_errors(env_worlds, tmp_path, capsys):
    run = _train(env_worlds, tmp_path, "dbc", "rssm", True)
    assert wmil_main(["export", str(run)]) == 0
    path = run / "policy.pt2"
    assert "exported" in capsys.readouterr().out and path.with_suffix(".json").exists()
    code = ("import sys, torch; p = torch.export.load(sys.argv[1]).module(); "
            "out = p(torch.zeros(1, 4), torch.zeros(1, int(sys.argv[2])), torch.zeros(1, int(sys.argv[3])), "
            "torch.zeros(1, 2), torch.ones(1, dtype=torch.bool), torch.zeros(1, int(sys.argv[3]))); "
            "assert not any(m == 'wmil' or m.startswith('wmil.') for m in sys.modules), 'wmil was imported'; "
            "print(int(out[0][0]))")
    meta = json.loads(path.with_suffix(".json").read_text())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-c", code, str(path), str(meta["inputs"]["deter"][0]),
                           str(meta["inputs"]["stoch"][0])], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in ("0", "1")
    assert wmil_main(["export", str(run), "--out", str(tmp_path / "p.onnx")]) == 2
    assert "choose a name ending in .pt2" in capsys.readouterr().err
    assert wmil_main(["export", str(run), "--out", str(tmp_path / "missing" / "p.pt2")]) == 2
    assert "no such directory" in capsys.readouterr().err
