"""The Atari path of the DITTO paper, end to end on a tiny budget through the command line: the
shipped Pong and Breakout recipes (tiny episode counts), a world model at the 'paper' preset's
sizes (deter 1024, 32×32 latents, conv depth 48) on a few windows, DITTO in it, evaluation."""

from __future__ import annotations

import pytest

pytest.importorskip("ale_py")

from cli.main import main as wmil_main  # noqa: E402

# 4 episodes: the world recipes mix 4 ε values, one episode each at least.
TINY = ["--episodes", "4", "--max-episode-steps", "30", "--workers", "1", "--ref-episodes", "1", "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize("game", ["pong", "breakout"])
def test_atari_recipes_paper_sizes_and_ditto_through_the_cli(game, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert wmil_main(["build-dataset", f"{game}-world", *TINY]) == 0
    assert wmil_main(["build-dataset", f"{game}-expert", *TINY]) == 0
    from wmil.data import load

    world = load(f"atari-{game}/world-v0")
    assert world.spec.obs_shape == (1, 64, 64) and world.spec.obs_dtype == "uint8" and len(world) == 4
    # The paper preset's networks on a batch of 2 windows of 8 steps, one update.
    assert wmil_main(["train-model", "--dataset", f"atari-{game}/world-v0", "--preset", "paper", "--steps", "1",
                      "-o", "batch_size=2", "-o", "seq_len=8", "-o", "eval_batches=1", "-o", "open_loop_context=5",
                      "--out", str(runs / "wm"), "--quiet"]) == 0
    from wmil.nets import ConvEncoder
    from wmil.train.world_model import load_world_model

    wm = load_world_model(runs / "wm")
    assert (wm.config.deter, wm.config.hidden, wm.config.stoch, wm.config.classes, wm.config.cnn_depth) == \
        (1024, 1000, 32, 32, 48)
    assert isinstance(wm.encoder, ConvEncoder) and wm.likelihood == "gaussian"
    assert wmil_main(["imagine", "--algo", "ditto", "--model", str(runs / "wm"), "--expert", f"atari-{game}/expert-v0",
                      "--preset", "paper", "--steps", "1", "-o", "batch_size=8", "-o", "eval_starts=8",
                      "--out", str(runs / "ditto"), "--quiet"]) == 0
    capsys.readouterr()
    assert wmil_main(["evaluate", str(runs / "ditto"), "--episodes", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "return_mean" in printed  # (30-step episodes score 0 for every policy: no normalised score)
