"""`wmil plot`: a legend and one colour per run in every panel, an error for an unknown metric
(nothing overwritten), real-environment scores drawn when a run was evaluated."""

from __future__ import annotations

import json

import pytest
import yaml

from cli.main import main as wmil_main
from wmil.errors import UserError
from wmil.eval import plot


def fake_run(path, kind, rows, evaluations=None):
    """A run directory with ``config.yaml`` and ``metrics.jsonl`` (and ``evaluations.jsonl``)."""
    path.mkdir(parents=True)
    from wmil.runs import REQUIRED_FIELDS

    fields = {name: {} for name in REQUIRED_FIELDS.get(kind, ())}  # what a run's config.yaml must hold
    (path / "config.yaml").write_text(yaml.safe_dump({"kind": kind, **fields}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if evaluations:
        (path / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evaluations))
    return path


@pytest.fixture
def two_policy_runs(tmp_path):
    rows = lambda scale: [{"step": s, "eval/latent_distance": scale / s, "actor/entropy": 1.0 - s / 100,
                           "loss/critic": scale * s} for s in (10, 20, 30)]
    a = fake_run(tmp_path / "a" / "ditto", "policy", rows(1.0),
                 [{"step": 30, "real/normalized_score": 0.9, "real/return_mean": 450.0}])
    b = fake_run(tmp_path / "b" / "dbc", "policy", rows(2.0))
    return a, b


def test_every_panel_has_a_legend_and_each_run_one_colour(two_policy_runs, monkeypatch):
    import matplotlib.figure

    saved = {}
    original = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: (saved.setdefault("fig", self), original(self, *a, **k))[1])
    a, b = two_policy_runs
    path = plot.plot_runs([a, b])
    assert path == a / "curves.png" and path.stat().st_size > 0
    axes = [ax for ax in saved["fig"].axes if ax.get_visible() and ax.lines]
    titles = [ax.get_title() for ax in axes]
    assert titles == ["eval/latent_distance", "actor/entropy", "loss/critic", "real/normalized_score (real env)"]
    colours = {}
    for ax in axes:
        legend = ax.get_legend()
        assert legend is not None, ax.get_title()
        labels = [t.get_text() for t in legend.get_texts()]
        assert labels == [line.get_label() for line in ax.lines]
        for line in ax.lines:
            colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert set(colours) == {"ditto", "dbc"}
    assert all(len(c) == 1 for c in colours.values()) and colours["ditto"] != colours["dbc"]
    real = axes[-1]
    assert [line.get_label() for line in real.lines] == ["ditto"]  # only the evaluated run
    assert list(real.lines[0].get_xdata()) == [30] and list(real.lines[0].get_ydata()) == [0.9]


def test_runs_with_the_same_folder_name_get_their_paths_as_labels(tmp_path):
    assert plot._labels(["x/run", "y/run", "z/other"]) == ["x/run", "y/run", "other"]


def test_unknown_metric_is_an_error_and_nothing_is_overwritten(two_policy_runs, capsys):
    a, b = two_policy_runs
    curves = a / "curves.png"
    curves.write_bytes(b"previous plot")
    with pytest.raises(UserError, match="--metric nope: not logged by these runs; logged: .*actor/entropy"):
        plot.plot_runs([a, b], ["nope"])
    assert wmil_main(["plot", str(a), str(b), "--metric", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --metric nope") and err.count("\n") == 1
    assert curves.read_bytes() == b"previous plot"
    assert wmil_main(["plot", str(a), "--metric", "loss/critic"]) == 0
    assert curves.read_bytes() != b"previous plot"


def test_evaluation_json_of_older_runs_is_drawn(tmp_path):
    run = fake_run(tmp_path / "old", "policy", [{"step": 5, "actor/entropy": 0.5}])
    (run / "evaluation.json").write_text(json.dumps({"step": 5, "return_mean": 120.0}))
    assert plot.real_rows(run) == [{"step": 5, "real/return_mean": 120.0}]
