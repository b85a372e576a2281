"""The ``wmil`` command line. Heavy modules are imported inside commands so --help is instant."""

from __future__ import annotations

import json
import sys

import click

from wmil.errors import UserError


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict) and {"mean", "std", "min", "max"} <= set(value):
        return f"{value['mean']:.2f} ± {value['std']:.2f} (min {value['min']:.2f}, max {value['max']:.2f})"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def print_summary(summary: dict) -> None:
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        click.echo(f"  {key:<{width}}  {_fmt(value)}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wmil")
def cli():
    """wmil: offline imitation learning inside learned world models.

    \b
    Pipeline:  build-dataset → train-model → imagine → evaluate
    Datasets are Minari datasets in $MINARI_DATASETS_PATH (default ~/.minari/datasets).
    """


# ---------------------------------------------------------------------------------------------
@cli.command("build-dataset")
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@click.option("--name", help="Dataset id 'namespace/name-vN' (overrides the recipe).")
@click.option("--env", "env_id", help="Gymnasium id, e.g. CartPole-v1, ALE/Pong-v5, FetchPush-v4.")
@click.option("--policy", help="random | expert | module:callable | policy.pt2 (torch.export) | policy.pt (TorchScript) | model.zip (SB3).")
@click.option("--epsilon", help="ε (or comma list: episodes split evenly), random-action prob. / action noise.")
@click.option("--episodes", type=int, help="Number of episodes.")
@click.option("--seed", type=int, help="Episode k is reset with seed+k (default 0).")
@click.option("--workers", type=int, help="Parallel environment copies (default 1).")
@click.option("--pixels", type=int, help="Render observations to N×N uint8 images (e.g. 64).")
@click.option("--grayscale", is_flag=True, default=None, help="One-channel pixel observations.")
@click.option("--max-episode-steps", type=int, help="Override the environment's time limit.")
@click.option("--ref-min-score", type=float, help="Random-policy return (measured if omitted).")
@click.option("--ref-max-score", type=float, help="Expert return (measured if omitted and an expert exists).")
@click.option("--ref-episodes", type=int, help="Episodes to measure missing reference scores (0: skip).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset of the same name.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build_dataset_cmd(recipe, name, env_id, policy, epsilon, episodes, seed, workers, pixels, grayscale,
                      max_episode_steps, ref_min_score, ref_max_score, ref_episodes, overwrite, quiet):
    """Record rollouts of a policy into a Minari dataset (from flags or a YAML RECIPE)."""
    from wmil.data.build import BuildConfig, build_dataset, load_recipe

    eps = None
    if epsilon is not None:
        try:
            eps = [float(x) for x in epsilon.split(",")]
        except ValueError:
            raise UserError(f"--epsilon {epsilon!r}: expected a number or a comma-separated list of numbers") from None
    overrides = dict(name=name, env=env_id, policy=policy, epsilon=eps, episodes=episodes, seed=seed,
                     workers=workers, pixels=pixels, grayscale=grayscale, max_episode_steps=max_episode_steps,
                     ref_min_score=ref_min_score, ref_max_score=ref_max_score, ref_episodes=ref_episodes)
    if recipe:
        config = load_recipe(recipe, **overrides)
    else:
        if not name or not env_id:
            raise UserError("build-dataset needs a RECIPE file or both --name and --env")
        config = BuildConfig(**{k: v for k, v in overrides.items() if v is not None})
    dataset = build_dataset(config, overwrite=overwrite, progress=not quiet)
    click.echo(f"wrote {dataset.name} to {dataset.data_dir.parent}")
    print_summary(dataset.summary())


# ---------------------------------------------------------------------------------------------
@cli.group("datasets")
def datasets_group():
    """List, inspect, import, export, merge and split datasets."""


@datasets_group.command("list")
def datasets_list():
    """Local datasets with episode and step counts."""
    from wmil.data import names
    from wmil.data.dataset import load

    found = names.list_names()
    if not found:
        click.echo(f"no datasets in {names.datasets_root()}")
        return
    click.echo(f"{'name':<40} {'episodes':>9} {'steps':>10}  observation / action")
    for name in found:
        try:
            ds = load(name)
            click.echo(f"{name:<40} {len(ds):>9} {ds.total_steps:>10}  {ds.observation_space.shape} / {ds.action_space}")
        except UserError as exc:
            click.echo(f"{name:<40} {'?':>9} {'?':>10}  unreadable: {exc}")


@datasets_group.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def datasets_info(name, as_json):
    """Episodes, steps, return/length statistics, spaces and success rate of NAME."""
    from wmil.data.dataset import load

    summary = load(name).summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_summary(summary)


@datasets_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="Dataset id 'namespace/name-vN' to create.")
@click.option("--ref-min-score", type=float, help="Random-policy return for normalised scores.")
@click.option("--ref-max-score", type=float, help="Expert return for normalised scores.")
@click.option("--overwrite", is_flag=True)
def datasets_import(file, name, ref_min_score, ref_max_score, overwrite):
    """Import a D4RL-style flat HDF5 FILE (observations, actions, rewards, terminals, timeouts)."""
    from wmil.data.transfer import import_d4rl

    ds = import_d4rl(file, name, overwrite=overwrite, ref_min_score=ref_min_score, ref_max_score=ref_max_score)
    click.echo(f"imported {file} as {ds.name}: {len(ds)} episodes, {ds.total_steps} steps")


@datasets_group.command("export")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True)
def datasets_export(name, file, overwrite):
    """Write dataset NAME to FILE in the flat D4RL layout (with next_observations)."""
    from wmil.data.transfer import export_d4rl

    path = export_d4rl(name, file, overwrite=overwrite)
    click.echo(f"exported {name} to {path}")


@datasets_group.command("merge")
@click.argument("sources", nargs=-1, required=True)
@click.option("--name", required=True, help="Dataset id of the merged dataset.")
@click.option("--overwrite", is_flag=True)
def datasets_merge(sources, name, overwrite):
    """Concatenate SOURCES (same spaces) into a new dataset."""
    from wmil.data.transfer import merge

    ds = merge(list(sources), name, overwrite=overwrite)
    click.echo(f"merged {len(sources)} datasets into {ds.name}: {len(ds)} episodes, {ds.total_steps} steps")


@datasets_group.command("split")
@click.argument("source")
@click.option("--train", "train_name", required=True, help="Dataset id for the training part.")
@click.option("--validation", "validation_name", required=True, help="Dataset id for the validation part.")
@click.option("--fraction", default=0.1, show_default=True, help="Fraction of episodes for validation.")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True)
def datasets_split(source, train_name, validation_name, fraction, seed, overwrite):
    """Split SOURCE by episode into training and validation datasets."""
    from wmil.data.transfer import split

    train, val = split(source, train_name, validation_name, fraction, seed, overwrite=overwrite)
    click.echo(f"{train.name}: {len(train)} episodes; {val.name}: {len(val)} episodes")


@datasets_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def datasets_delete(name, yes):
    """Remove dataset NAME from disk."""
    from wmil.data.storage import delete

    if not yes:
        click.confirm(f"delete dataset {name}?", abort=True)
    delete(name)
    click.echo(f"deleted {name}")


# ---------------------------------------------------------------------------------------------
@cli.command("train-model")
@click.option("--dataset", "datasets", multiple=True, required=True, help="Dataset name or path (repeatable: all are used).")
@click.option("--model", default="rssm", show_default=True, help="rssm | gaussian_rssm | dynamics.")
@click.option("--preset", default="small", show_default=True, help="tiny | small | paper.")
@click.option("--steps", type=int, help="Optimiser updates (default from the preset).")
@click.option("--seed", type=int, help="Seed for initialisation, sampling and the validation split.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/<model>-<dataset>); re-run to resume.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), help="fp32 (default) or bf16 autocast; KL, losses and latents stay fp32.")
@click.option("-o", "overrides", multiple=True, help="Any config field: -o lr=1e-4, -o model.deter=256, -o train.batch_size=16.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_model_cmd(datasets, model, preset, steps, seed, out, device, precision, overrides, quiet):
    """Train a world model on all given datasets (mixed quality is the point)."""
    from wmil.config import parse_overrides
    from wmil.train.world_model import train_world_model

    train_world_model(list(datasets), model=model, preset=preset, out=out, steps=steps, seed=seed, device=device,
                      overrides=parse_overrides(overrides), progress=not quiet, precision=precision)
    from wmil.runs import RunDir

    run = RunDir(out, "world_model") if out else None
    if run is not None:
        last = [m for m in run.read_metrics() if "open_loop/ratio_h15" in m]
        click.echo(f"trained {model}; run dir {run.path}")
        if last:
            m = last[-1]
            click.echo("  open-loop MSE / naive:  " + ",  ".join(
                f"h{h}: {m[f'open_loop/ratio_h{h}']:.3f}" for h in (1, 5, 15)))


@cli.command("evaluate-model")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--dataset", "datasets", multiple=True, help="Evaluate on these datasets (default: the run's held-out episodes).")
@click.option("--batches", default=8, show_default=True, help="Batches of up to 32 windows.")
@click.option("--context", default=10, show_default=True, help="Observed steps before imagining.")
def evaluate_model_cmd(run_dir, datasets, batches, context):
    """Open-loop prediction error at horizons 1, 5, 15 vs. repeating the last observation."""
    from wmil.eval.world_model import evaluate_model_run

    report = evaluate_model_run(run_dir, list(datasets) or None, batches=batches, context=context)
    click.echo(f"{'horizon':>8} {'model MSE':>12} {'naive MSE':>12} {'ratio':>8}")
    for h in (1, 5, 15):
        click.echo(f"{h:>8} {report[f'open_loop/mse_h{h}']:>12.5f} {report[f'open_loop/naive_mse_h{h}']:>12.5f} "
                   f"{report[f'open_loop/ratio_h{h}']:>8.3f}")
    if "per_dim_mse_15_steps" in report:
        click.echo("  per coordinate, mean over 15 imagined steps (model / naive): " + ", ".join(
            f"{m:.4f}/{n:.4f}" for m, n in zip(report["per_dim_mse_15_steps"], report["per_dim_naive_mse_15_steps"])))
    click.echo(f"report: {report['report_path']}" + (f"; image strip: {report['strip_path']}" if report.get("strip_path") else ""))


# ---------------------------------------------------------------------------------------------
@cli.command("imagine")
@click.option("--algo", required=True, help="ditto | dgail | dbc | sqil | gpril | vins | bc.")
@click.option("--model", "model_run", type=click.Path(file_okay=False), help="World-model run directory (wmil train-model); not needed by bc.")
@click.option("--expert", required=True, help="Expert dataset name or path.")
@click.option("--expert-episodes", type=int, help="Use only the first K expert episodes.")
@click.option("--preset", default="small", show_default=True, help="tiny | small | paper.")
@click.option("--steps", type=int, help="Training updates (default from the preset).")
@click.option("--seed", type=int, help="Seed.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/<algo>-<expert>); re-run to resume.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option("-o", "overrides", multiple=True, help="Any config field: -o gamma=0.99, -o algo.batch_size=128, -o train.eval_every=100.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def imagine_cmd(algo, model_run, expert, expert_episodes, preset, steps, seed, out, device, overrides, quiet):
    """Train an imitation policy entirely inside a world model (no environment access)."""
    from wmil.algos.base import train_policy
    from wmil.config import parse_overrides

    policy = train_policy(algo, model_run, expert, out=out, preset=preset, steps=steps, expert_episodes=expert_episodes,
                          seed=seed, device=device, overrides=parse_overrides(overrides), progress=not quiet)
    click.echo(f"trained {algo} policy" + (f"; run dir {out}" if out else ""))
    del policy


@cli.command("evaluate")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--env", "env_id", help="Environment id (default: the expert dataset's environment).")
@click.option("--episodes", default=20, show_default=True, help="Evaluation episodes.")
@click.option("--seed", type=int, help="First evaluation seed (default 1,000,000).")
@click.option("--video", is_flag=True, help="Save GIFs of the first episodes under RUN_DIR/videos/.")
@click.option("--stochastic", is_flag=True, help="Sample actions instead of taking the most likely one.")
@click.option("--out", type=click.Path(file_okay=False), help="Write the report here instead of RUN_DIR.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate_cmd(run_dir, env_id, episodes, seed, video, stochastic, out, quiet):
    """Roll a trained policy out in the real environment and report its scores."""
    from wmil.eval.evaluate import EVAL_SEED, evaluate_policy

    report = evaluate_policy(run_dir, env_id=env_id, episodes=episodes, seed=EVAL_SEED if seed is None else seed,
                             video=video, deterministic=not stochastic, progress=not quiet, out=out)
    keys = ["env", "episodes", "return_mean", "return_stderr", "normalized_score", "success_rate", "success_any",
            "length_mean", "eval/latent_distance", "eval/action_accuracy", "eval/action_mse", "report_path"]
    print_summary({k: report[k] for k in keys if k in report})


@cli.command("plot")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--metric", "metrics", multiple=True, help="Metric key(s) to draw (default: the main ones of the run kind).")
@click.option("--out", type=click.Path(dir_okay=False), help="PNG path (default RUN/curves.png).")
def plot_cmd(runs, metrics, out):
    """Learning curves of one or more runs from their metrics.jsonl."""
    from wmil.eval.plot import plot_runs

    path = plot_runs(list(runs), list(metrics) or None, out)
    click.echo(f"wrote {path}")


def main(argv=None) -> int:
    """Entry point: UserError → one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="wmil", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
