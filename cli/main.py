"""The ``wmil`` command line. Heavy modules are imported inside commands so --help is instant."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import click

from wmil.errors import UserError, WmilWarning

_python_showwarning = warnings.showwarning


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


class LazyChoice(click.Choice):
    """A ``click.Choice`` whose choices come from a registry that is imported only when a command
    needs them (its ``--help`` or its parsing), so ``wmil --help`` stays fast."""

    def __init__(self, load, case_sensitive: bool = True):
        self._load = load
        self._choices: tuple | None = None
        self.case_sensitive = case_sensitive

    @property
    def choices(self):  # type: ignore[override]
        if self._choices is None:
            self._choices = tuple(self._load())
        return self._choices


def _world_models():
    from wmil.config import WORLD_MODELS

    return WORLD_MODELS


def _algorithms():
    from wmil.config import ALGORITHMS

    return ALGORITHMS


def _presets():
    from wmil.config import PRESETS

    return PRESETS


class DeviceChoice(click.Choice):
    """auto | cpu | cuda, and cuda:N for one GPU of several."""

    def __init__(self):
        super().__init__(["auto", "cpu", "cuda", "cuda:N"])

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.startswith("cuda:") and value[5:].isdigit():
            return value
        if value == "cuda:N":
            self.fail("write the GPU's index, e.g. cuda:0", param, ctx)
        return super().convert(value, param, ctx)


def _use_threads(ctx, param, value):
    from wmil.threads import use_threads

    use_threads(value)
    return value


def threads_option(command):
    """``--threads N``: torch's CPU threads for this command (same as WMIL_NUM_THREADS=N)."""
    return click.option("--threads", type=click.IntRange(min=1), expose_value=False, callback=_use_threads,
                        help="CPU threads for torch (default 1, or $WMIL_NUM_THREADS). Measured on 2 cores: 2 "
                             "threads were at best 1.1x faster, and 10-50x slower beside a busy process.")(command)


def _use_memory_budget(ctx, param, value):
    if value is not None:
        from wmil.data.dataset import set_memory_budget
        from wmil.errors import UserError

        try:
            set_memory_budget(value)
        except UserError as error:
            raise click.BadParameter(str(error).split(": ", 1)[-1]) from None
    return value


def memory_budget_option(command):
    """``--memory-budget SIZE``: datasets whose observations take more are read from disk."""
    return click.option("--memory-budget", expose_value=False, callback=_use_memory_budget, metavar="SIZE",
                        help="Datasets whose observations take more than this (e.g. 4GB, 512MiB) are sampled from "
                             "disk instead of RAM (default: 2 GiB or a quarter of the available memory, whichever "
                             "is smaller; or $WMIL_IN_MEMORY_BYTES).")(command)


RATIO_WARNING = ("warning: open-loop ratio {ratio:.3g} at horizon {h}: the model predicts worse than repeating the "
                 "last observation; train longer (--steps), on more data, or check the observations")


def warn_ratios(values: dict) -> None:
    """A warning line per horizon whose open-loop ratio is above 1 (``open_loop/ratio_h{h}`` keys)."""
    for h in (1, 5, 15):
        ratio = values.get(f"open_loop/ratio_h{h}")
        if ratio is not None and ratio > 1:
            click.echo(RATIO_WARNING.format(ratio=ratio, h=h), err=True)


#: Metric groups shown in the final summary of a run, by kind.
SUMMARY_PREFIXES = {
    "world_model": ("loss/total", "loss/obs", "loss/kl", "val/", "open_loop/ratio_h", "perf/"),
    "policy": ("eval/", "reward/", "loss/", "actor/entropy", "perf/"),
}


def print_run_summary(run_dir) -> None:
    """The run directory, its step, and the last logged value of its key metrics."""
    from wmil.runs import RunDir

    run = RunDir(run_dir, "any")
    kind = run.read_config().get("kind")
    last: dict[str, tuple[int, float]] = {}
    for record in run.read_metrics():
        for key, value in record.items():
            if key != "step":
                last[key] = (record["step"], value)
    steps = [s for s, _ in last.values()]
    click.echo(f"run dir: {run.path}" + (f"  (step {max(steps)})" if steps else ""))
    prefixes = SUMMARY_PREFIXES.get(kind, ("",))
    rank = {key: next((i for i, p in enumerate(prefixes) if key.startswith(p)), None) for key in last}
    keys = sorted((k for k in last if rank[k] is not None), key=lambda k: rank[k])  # stable: logged order
    if not keys:
        return
    width = max(len(k) for k in keys)
    final = max(steps)
    for key in keys:
        step, value = last[key]
        click.echo(f"  {key:<{width}}  {_fmt(value)}" + ("" if step == final else f"  (at step {step})"))
    warn_ratios({k: v for k, (_, v) in last.items()})


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
@click.argument("recipe", required=False)
@click.option("--name", help="Dataset id 'namespace/name-vN' (overrides the recipe).")
@click.option("--env", "env_id", help="Gymnasium id, e.g. CartPole-v1, ALE/Pong-v5, FetchPush-v4.")
@click.option("--policy", help="random | expert | module:callable | policy.pt2 (torch.export, loaded without unpickling) | "
                               "policy.pt (TorchScript) | model.zip (SB3). TorchScript, SB3 and module:callable policies "
                               "are code: loading one runs it, so use only ones you trust.")
@click.option("--epsilon", help="ε (or comma list: episodes split evenly), random-action prob. / action noise.")
@click.option("--episodes", type=click.IntRange(min=1), help="Number of episodes.")
@click.option("--seed", type=click.IntRange(min=0), help="Episode k is reset with seed+k (default 0).")
@click.option("--workers", type=click.IntRange(min=1), help="Parallel environment copies (default 1).")
@click.option("--pixels", type=click.IntRange(8, 512), help="Render observations to N×N uint8 images (e.g. 64).")
@click.option("--grayscale", is_flag=True, default=None, help="One-channel pixel observations.")
@click.option("--max-episode-steps", type=click.IntRange(min=1), help="Override the environment's time limit.")
@click.option("--ref-min-score", type=float, help="Random-policy return (measured if omitted).")
@click.option("--ref-max-score", type=float, help="Expert return (measured if omitted and an expert exists).")
@click.option("--ref-episodes", type=click.IntRange(min=0), help="Episodes to measure missing reference scores (0: skip).")
@click.option("--author", help="Author stored in the Minari metadata (default: none).")
@click.option("--author-email", help="Author's e-mail stored in the Minari metadata (default: none).")
@click.option("--code-permalink", help="Link to the code that made the data, for the Minari metadata (default: none).")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset of the same name.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@threads_option
def build_dataset_cmd(recipe, name, env_id, policy, epsilon, episodes, seed, workers, pixels, grayscale,
                      max_episode_steps, ref_min_score, ref_max_score, ref_episodes, author, author_email,
                      code_permalink, overwrite, quiet):
    """Record rollouts of a policy into a Minari dataset, from flags or a RECIPE.

    RECIPE is a YAML file or the name of a recipe shipped with wmil (wmil datasets recipes lists
    them), e.g. cartpole-world; flags override its fields.
    """
    from wmil.data.build import BuildConfig, build_dataset, load_recipe
    from wmil.data.recipes import find_recipe

    eps = None
    if epsilon is not None:
        try:
            eps = [float(x) for x in epsilon.split(",")]
        except ValueError:
            raise UserError(f"--epsilon {epsilon!r}: expected a number or a comma-separated list of numbers") from None
    overrides = dict(name=name, env=env_id, policy=policy, epsilon=eps, episodes=episodes, seed=seed,
                     workers=workers, pixels=pixels, grayscale=grayscale, max_episode_steps=max_episode_steps,
                     ref_min_score=ref_min_score, ref_max_score=ref_max_score, ref_episodes=ref_episodes,
                     author=author, author_email=author_email, code_permalink=code_permalink)
    if recipe:
        config = load_recipe(find_recipe(recipe), **overrides)
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


@datasets_group.command("recipes")
def datasets_recipes():
    """Dataset recipes shipped with wmil (build one with: wmil build-dataset NAME)."""
    from wmil.data.recipes import describe, list_recipes, recipes_dir

    found = list_recipes()
    if not found:
        click.echo("no recipes installed")
        return
    rows = [describe(path) for path in found.values()]
    header = {"recipe": "recipe", "dataset": "dataset", "env": "env", "episodes": "episodes", "policy": "policy"}
    widths = {k: max(len(str(r[k])) for r in rows + [header]) for k in header}
    for row in [header] + rows:
        click.echo("  ".join(f"{str(row[k]):<{widths[k]}}" if k != "episodes" else f"{str(row[k]):>{widths[k]}}"
                             for k in header).rstrip())
    click.echo(f"(in {recipes_dir()})")


@datasets_group.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/inf in observations, rewards and actions (an error otherwise).")
def datasets_info(name, as_json, allow_nonfinite):
    """Episodes, steps, return/length statistics, spaces and success rate of NAME (after its check)."""
    from wmil.data.dataset import load

    dataset = load(name)
    dataset.check(allow_nonfinite)
    summary = dataset.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_summary(summary)


@datasets_group.command("check")
@click.argument("name")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/inf in observations, rewards and actions (an error otherwise).")
def datasets_check(name, allow_nonfinite):
    """Verify every episode of dataset NAME (a name, a dataset directory, or a D4RL-style HDF5
    FILE): lengths, dtypes and shapes against the spaces, finite values, flags exactly 0/1,
    actions inside the action space. Names the first bad episode, field and index."""
    import time
    from pathlib import Path

    from wmil.data.dataset import load

    path = Path(name)
    if path.suffix in (".hdf5", ".h5") and path.is_file() and not (path.parent / "metadata.json").is_file():
        from wmil.data.transfer import check_d4rl

        started = time.perf_counter()
        episodes, steps = check_d4rl(path, allow_nonfinite)
        click.echo(f"ok: {path} (D4RL layout): {episodes} episodes, {steps} steps verified in "
                   f"{time.perf_counter() - started:.2f} s")
        return
    dataset = load(path.parent if path.name == "main_data.hdf5" else name)
    report = dataset.check(allow_nonfinite)
    extra = " (NaN/inf allowed)" if allow_nonfinite else ""
    click.echo(f"ok: dataset {dataset.name}: {report.episodes} episodes, {report.steps} steps verified in "
               f"{report.seconds:.2f} s{extra}")


@datasets_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="Dataset id 'namespace/name-vN' to create.")
@click.option("--ref-min-score", type=float, help="Random-policy return for normalised scores.")
@click.option("--ref-max-score", type=float, help="Expert return for normalised scores.")
@click.option("--overwrite", is_flag=True)
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/inf in observations, rewards and actions (an error otherwise).")
def datasets_import(file, name, ref_min_score, ref_max_score, overwrite, allow_nonfinite):
    """Import a D4RL-style flat HDF5 FILE (observations, actions, rewards, terminals, timeouts)."""
    from wmil.data.transfer import import_d4rl

    ds = import_d4rl(file, name, overwrite=overwrite, ref_min_score=ref_min_score, ref_max_score=ref_max_score,
                     allow_nonfinite=allow_nonfinite)
    click.echo(f"imported {file} as {ds.name}: {len(ds)} episodes, {ds.total_steps} steps")


@datasets_group.command("export")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True)
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/inf in observations, rewards and actions (an error otherwise).")
def datasets_export(name, file, overwrite, allow_nonfinite):
    """Write dataset NAME to FILE in the flat D4RL layout (with next_observations)."""
    from wmil.data.transfer import export_d4rl

    path = export_d4rl(name, file, overwrite=overwrite, allow_nonfinite=allow_nonfinite)
    click.echo(f"exported {name} to {path}")


@datasets_group.command("merge")
@click.argument("sources", nargs=-1, required=True)
@click.option("--name", required=True, help="Dataset id of the merged dataset.")
@click.option("--overwrite", is_flag=True)
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/inf in observations, rewards and actions (an error otherwise).")
def datasets_merge(sources, name, overwrite, allow_nonfinite):
    """Concatenate SOURCES (same spaces) into a new dataset."""
    from wmil.data.transfer import merge

    ds = merge(list(sources), name, overwrite=overwrite, allow_nonfinite=allow_nonfinite)
    click.echo(f"merged {len(sources)} datasets into {ds.name}: {len(ds)} episodes, {ds.total_steps} steps")


@datasets_group.command("split")
@click.argument("source")
@click.option("--train", "train_name", required=True, help="Dataset id for the training part.")
@click.option("--validation", "validation_name", required=True, help="Dataset id for the validation part.")
@click.option("--fraction", default=0.1, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Fraction of episodes for validation.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--overwrite", is_flag=True)
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/inf in observations, rewards and actions (an error otherwise).")
def datasets_split(source, train_name, validation_name, fraction, seed, overwrite, allow_nonfinite):
    """Split SOURCE by episode into training and validation datasets."""
    from wmil.data.transfer import split

    train, val = split(source, train_name, validation_name, fraction, seed, overwrite=overwrite,
                       allow_nonfinite=allow_nonfinite)
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
@click.option("--model", type=LazyChoice(_world_models), default="rssm", show_default=True, help="World model.")
@click.option("--preset", type=LazyChoice(_presets), default="small", show_default=True,
              help="Sizes: tiny (tests), small (a 2-core CPU), paper (published sizes).")
@click.option("--steps", type=click.IntRange(min=1), help="Optimiser updates (default from the preset).")
@click.option("--seed", type=click.IntRange(min=0), help="Seed for initialisation, sampling and the validation split.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/<model>-<dataset>); re-run to resume.")
@click.option("--device", type=DeviceChoice(), default="auto", show_default=True, help="auto: CUDA when present.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]),
              help="fp32 (default) or bf16 autocast for the world model's forward pass; KL, losses and latents stay fp32.")
@click.option("-o", "overrides", multiple=True, help="Any config field: -o lr=1e-4, -o model.deter=256, -o train.batch_size=16 "
              "(every field: wmil config show MODEL, wmil config show train-model).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Also load checkpoints that need unpickling (written by older wmil versions). Unpickling can "
                   "run code stored in the file: use only for files you trust.")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/inf in observations, rewards and actions (an error otherwise); recorded as train.allow_nonfinite.")
@click.option("--init-from", type=click.Path(file_okay=False, exists=True),
              help="Start from another train-model run's parameters (same model and data layout; heads it lacks, "
                   "e.g. -o continue_head=true, start fresh). Read when the run starts, not when it resumes.")
@memory_budget_option
@threads_option
def train_model_cmd(datasets, model, preset, steps, seed, out, device, precision, overrides, quiet, trust_checkpoint,
                    allow_nonfinite, init_from):
    """Train a world model on all given datasets (mixed quality is the point).

    Data-parallel: `torchrun --nproc-per-node N --no-python wmil train-model ...` splits each
    global batch over N processes (gloo on CPU, NCCL on CUDA); rank 0 writes the run."""
    from wmil.config import parse_overrides
    from wmil.train.world_model import train_world_model

    pairs = parse_overrides(overrides)
    if allow_nonfinite:
        pairs["train.allow_nonfinite"] = "true"
    trained = train_world_model(list(datasets), model=model, preset=preset, out=out, steps=steps, seed=seed,
                                device=device, overrides=pairs, progress=not quiet, trust_checkpoint=trust_checkpoint,
                                precision=precision, init_from=init_from)
    from wmil.distributed import launched

    if launched()[0] == 0:  # under torchrun, rank 0 speaks for the run
        click.echo(f"trained {model}")
        print_run_summary(trained.run_dir)


@cli.command("evaluate-model")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--dataset", "datasets", multiple=True, help="Evaluate on these datasets (default: the run's held-out episodes).")
@click.option("--batches", default=8, show_default=True, type=click.IntRange(min=1), help="Batches of up to 32 windows.")
@click.option("--context", default=10, show_default=True, type=click.IntRange(min=1), help="Observed steps before imagining.")
@click.option("--expert", help="Expert dataset: also run the reward check (is the imitation reward's best action the "
              "expert's?) on its episodes.")
@click.option("--reward-features", type=click.Choice(["deter", "mean", "sample"]), default="deter", show_default=True,
              help="Features the checked reward compares (DITTO's reward_features).")
@click.option("--horizon", default=15, show_default=True, type=click.IntRange(min=1), help="Imagined steps of the reward check.")
@click.option("--video", is_flag=True, help="Image models: RUN_DIR/open_loop.gif, real frames beside the model's "
              "(reconstructed while observing, then imagined open loop from the same start).")
@click.option("--video-format", type=click.Choice(["gif", "mp4"]), default="gif", show_default=True,
              help="Video file format (mp4: H.264 through imageio-ffmpeg).")
@click.option("--trust-checkpoint", is_flag=True,
              help="Also load checkpoints that need unpickling (written by older wmil versions). Unpickling can "
                   "run code stored in the file: use only for files you trust.")
@threads_option
def evaluate_model_cmd(run_dir, datasets, batches, context, expert, reward_features, horizon, video, video_format,
                       trust_checkpoint):
    """Open-loop prediction error at horizons 1, 5, 15 vs. repeating the last observation; with
    --expert the reward check of the world model; with --video (image models) real frames beside
    the model's."""
    from wmil.eval.world_model import evaluate_world_model

    report = evaluate_world_model(run_dir, list(datasets) or None, batches=batches, context=context, expert=expert,
                                  reward_features=reward_features, horizon=horizon, trust=trust_checkpoint,
                                  video=video, video_format=video_format)
    click.echo(f"{'horizon':>8} {'model MSE':>12} {'naive MSE':>12} {'ratio':>8}")
    for h in (1, 5, 15):
        click.echo(f"{h:>8} {report[f'open_loop/mse_h{h}']:>12.5f} {report[f'open_loop/naive_mse_h{h}']:>12.5f} "
                   f"{report[f'open_loop/ratio_h{h}']:>8.3f}")
    if "per_dim_mse_15_steps" in report:
        click.echo("  per coordinate, mean over 15 imagined steps (model / naive): " + ", ".join(
            f"{m:.4f}/{n:.4f}" for m, n in zip(report["per_dim_mse_15_steps"], report["per_dim_naive_mse_15_steps"])))
    if "reward_check/accuracy" in report:
        classes = [f"{k.rsplit('action', 1)[1]}: {v:.2f}" for k, v in report.items()
                   if k.startswith("reward_check/accuracy_action")]
        click.echo(f"reward check ({report['reward_check/starts']:.0f} expert states, {horizon} steps, "
                   f"{reward_features} features): the expert's action is the reward's best on "
                   f"{report['reward_check/accuracy']:.2f} of them (chance {report['reward_check/chance']:.2f}, "
                   f"target 0.9)" + (f"; by expert action {', '.join(classes)}" if classes else "")
                   + (f"; beats a perturbed action {report['reward_check/pairwise']:.2f}"
                      if "reward_check/pairwise" in report else ""))
    if "start_recall/episodes" in report:
        from wmil.eval.world_model import RECALL_STEPS

        channels = sorted({int(k.split("/c")[1].split("_")[0]) for k in report if k.startswith("start_recall/c")})
        click.echo(f"cells shown by the filter k steps after an episode starts ({report['start_recall/episodes']} "
                   f"episodes; recall per channel, k = {', '.join(map(str, RECALL_STEPS))}):")
        for c in channels:
            click.echo(f"  channel {c}: " + " ".join(f"{report[f'start_recall/c{c}_t{k}']:.2f}" for k in RECALL_STEPS))
    click.echo(f"report: {report['report_path']}" + (f"; image strip: {report['strip_path']}" if report.get("strip_path") else ""))
    if report.get("video_path"):
        click.echo(f"video: {report['video_path']}  (left: real frames; right: the model, red bar = imagined)")
    warn_ratios(report)


# ---------------------------------------------------------------------------------------------
@cli.command("imagine")
@click.option("--algo", type=LazyChoice(_algorithms), required=True, help="Imitation algorithm (bc needs no --model).")
@click.option("--model", "model_run", type=click.Path(file_okay=False), help="World-model run directory (wmil train-model); not needed by bc.")
@click.option("--expert", required=True, help="Expert dataset name or path.")
@click.option("--expert-episodes", type=click.IntRange(min=1), help="Use only the first K expert episodes.")
@click.option("--preset", type=LazyChoice(_presets), default="small", show_default=True,
              help="Sizes: tiny (tests), small (a 2-core CPU), paper (published sizes).")
@click.option("--steps", type=click.IntRange(min=1), help="Training updates (default from the preset).")
@click.option("--seed", type=click.IntRange(min=0), help="Seed.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/<algo>-<expert>); re-run to resume.")
@click.option("--device", type=DeviceChoice(), default="auto", show_default=True, help="auto: CUDA when present.")
@click.option("-o", "overrides", multiple=True, help="Any config field: -o gamma=0.99, -o algo.batch_size=128, -o train.eval_every=100 "
              "(every field: wmil config show ALGO, wmil config show imagine).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Also load checkpoints that need unpickling (written by older wmil versions). Unpickling can "
                   "run code stored in the file: use only for files you trust.")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/inf in observations, rewards and actions in the expert data (an error otherwise).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]),
              help="fp32 (default) or bf16 autocast for the updates' forward passes; heads, returns and losses stay fp32.")
@memory_budget_option
@threads_option
def imagine_cmd(algo, model_run, expert, expert_episodes, preset, steps, seed, out, device, overrides, quiet,
                trust_checkpoint, allow_nonfinite, precision):
    """Train an imitation policy entirely inside a world model (no environment access).

    Data-parallel (every algorithm): `torchrun --nproc-per-node N --no-python wmil imagine ...`
    splits each global batch over N processes; rank 0 writes the run."""
    from wmil.train.policy import train_policy
    from wmil.config import parse_overrides

    pairs = parse_overrides(overrides)
    if allow_nonfinite:
        pairs["train.allow_nonfinite"] = "true"
    policy = train_policy(algo, model_run, expert, out=out, preset=preset, steps=steps, expert_episodes=expert_episodes,
                          seed=seed, device=device, overrides=pairs, progress=not quiet,
                          trust_checkpoint=trust_checkpoint, precision=precision)
    from wmil.distributed import launched

    if launched()[0] == 0:  # under torchrun, rank 0 speaks for the run
        click.echo(f"trained {algo} policy")
        print_run_summary(policy.run_dir)


@cli.command("evaluate")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--env", "env_id", help="Environment id (default: the expert dataset's environment).")
@click.option("--episodes", default=20, show_default=True, type=click.IntRange(min=1), help="Evaluation episodes.")
@click.option("--seed", type=click.IntRange(min=0), help="First evaluation seed (default 1,000,000).")
@click.option("--n-envs", default=16, show_default=True, type=click.IntRange(min=1),
              help="Environment copies stepped together (gymnasium SyncVectorEnv), the policy acting for all in one "
                   "batch: the same episodes (seeds); sampled actions are drawn in another order than with 1.")
@click.option("--video", is_flag=True, help="Record the first episodes under RUN_DIR/videos/ (every step, at the env's frame rate).")
@click.option("--video-episodes", default=1, show_default=True, type=click.IntRange(min=1), help="Episodes to record with --video.")
@click.option("--video-format", type=click.Choice(["gif", "mp4"]), default="gif", show_default=True,
              help="Video file format (mp4: H.264 through imageio-ffmpeg).")
@click.option("--act", type=click.Choice(["auto", "sample", "greedy"]), default="auto", show_default=True,
              help="Sample the policy's actions or take the most likely one; auto: the algorithm's convention "
                   "(sampled for DITTO, D-GAIL, D-BC and SQIL, as their authors evaluate; greedy for BC and VINS).")
@click.option("--starts", type=click.Choice(["standard", "shifted"]), default="standard", show_default=True,
              help="Start states: the environment's own, or shifted where the demos rarely go (CartPole, "
                   "LunarLander, Pendulum; see wmil.envs.protocols).")
@click.option("--action-noise", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Probability that the executed action is replaced by a random one.")
@click.option("--obs-noise", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Std of Gaussian noise added to the observations the policy sees.")
@click.option("--out", type=click.Path(file_okay=False), help="Write the report here instead of RUN_DIR.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Also load checkpoints that need unpickling (written by older wmil versions). Unpickling can "
                   "run code stored in the file: use only for files you trust.")
@threads_option
def evaluate_cmd(run_dir, env_id, episodes, seed, n_envs, video, video_episodes, video_format, act, starts, action_noise,
                 obs_noise, out, quiet, trust_checkpoint):
    """Roll a trained policy out in the real environment and report its scores (optionally under
    a covariate-shift protocol: shifted starts, action noise, observation noise)."""
    from wmil.eval.evaluate import EVAL_SEED, evaluate_policy

    report = evaluate_policy(run_dir, env_id=env_id, episodes=episodes, seed=EVAL_SEED if seed is None else seed,
                             n_envs=n_envs, video=video, video_episodes=video_episodes, video_format=video_format,
                             act=act, starts=starts, action_noise=action_noise, obs_noise=obs_noise,
                             progress=not quiet, out=out, trust=trust_checkpoint)
    keys = ["env", "episodes", "step", "act", "return_mean", "return_stderr", "normalized_score", "ref_protocol",
            "success_rate", "success_any", "length_mean", "eval/latent_distance", "eval/action_accuracy",
            "eval/action_mse", "report_path"]
    print_summary({k: report[k] for k in keys if report.get(k) is not None})
    for path, frames in zip(report.get("videos", []), report.get("video_frames", [])):
        click.echo(f"video: {path}  ({frames} frames at {report['video_fps']:g} fps)")


@cli.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["pt2"]), default="pt2", show_default=True,
              help="pt2: a torch.export program that loads with torch alone (torch.export.load).")
@click.option("--out", type=click.Path(dir_okay=False), help="Output file (default RUN_DIR/policy.pt2).")
@click.option("--trust-checkpoint", is_flag=True,
              help="Also load checkpoints that need unpickling (written by older wmil versions). Unpickling can "
                   "run code stored in the file: use only for files you trust.")
def export_cmd(run_dir, fmt, out, trust_checkpoint):
    """Export a trained policy as a self-contained program: encoder, recurrent filter and actor,
    with the state passed in and out (inputs and outputs described in the .json beside it)."""
    from wmil.export import export_policy
    from wmil.train.policy import load_policy

    policy = load_policy(run_dir, trust=trust_checkpoint)
    path = export_policy(policy, out or Path(run_dir) / "policy.pt2")
    click.echo(f"exported {path} (inputs and outputs: {path.with_suffix('.json')})")


@cli.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--starts", "protocols", multiple=True, type=click.Choice(["standard", "shifted"]),
              default=("standard", "shifted"), show_default=True, help="Start-state protocols to score under.")
@click.option("--episodes", default=20, show_default=True, type=click.IntRange(min=1),
              help="Evaluation episodes per policy and protocol.")
@click.option("--act", type=click.Choice(["auto", "sample", "greedy"]), default="auto", show_default=True,
              help="How the policies act (auto: each algorithm's convention).")
@click.option("--seed", type=click.IntRange(min=0), help="First evaluation seed (default 1,000,000).")
@click.option("--n-envs", default=16, show_default=True, type=click.IntRange(min=1),
              help="Environment copies stepped together, the policy acting for all in one batch.")
@threads_option
def compare_cmd(runs, protocols, episodes, act, seed, n_envs):
    """Score several trained policies side by side under each protocol (expert-normalised score,
    with the expert's and a random policy's returns under the same protocol; return)."""
    from wmil.eval.evaluate import EVAL_SEED, evaluate_policy
    from wmil.train.policy import load_policy

    rows = []
    for run in runs:
        policy = load_policy(run)  # a loaded policy: the run directory's own evaluation files are left alone
        cells = []
        for protocol in protocols:
            report = evaluate_policy(policy, episodes=episodes, act=act, starts=protocol, progress=False,
                                     seed=EVAL_SEED if seed is None else seed, n_envs=n_envs)
            score = report.get("normalized_score")
            cells.append(f"{score:6.2f} ({report['return_mean']:7.1f})" if score is not None
                         else f"   -   ({report['return_mean']:7.1f})")
        demos = len(policy.run_config.get("expert_episode_ids") or [])
        rows.append((f"{run}", f"{report.get('algo') or '?'}, {demos} demo{'s' if demos != 1 else ''}", cells))
    width = max(len(r[0]) for r in rows)
    click.echo(f"{'run':<{width}}  {'algorithm':<16}" + "".join(f"  {p + ' starts':>18}" for p in protocols))
    for run, what, cells in rows:
        click.echo(f"{run:<{width}}  {what:<16}" + "".join(f"  {c:>18}" for c in cells))
    click.echo(f"expert-normalised score (return) over {episodes} episodes; 1 = the scripted expert from the same "
               "starts, 0 = a random policy")


@cli.command("plot")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--metric", "metrics", multiple=True, help="Metric key(s) to draw (default: the main ones of the run kind).")
@click.option("--out", type=click.Path(dir_okay=False), help="PNG path (default RUN/curves.png).")
def plot_cmd(runs, metrics, out):
    """Learning curves of one or more runs from their metrics.jsonl."""
    from wmil.eval.plot import plot_runs

    path = plot_runs(list(runs), list(metrics) or None, out)
    click.echo(f"wrote {path}")


@cli.group("config")
def config_group():
    """Every config field of a component: value, accepted values and what it does."""


def _config_class(name: str) -> type:
    """The config class behind NAME: an algorithm, a world model, or a trainer."""
    from wmil.algos.base import algorithm_class
    from wmil.config import ALGORITHMS
    from wmil.train.policy import ImagineTrainConfig
    from wmil.train.world_model import WorldModelTrainConfig
    from wmil.world_models.registry import WORLD_MODELS

    trainers = {"train-model": WorldModelTrainConfig, "imagine": ImagineTrainConfig}
    if name in ALGORITHMS:
        return algorithm_class(name).config_cls
    if name in WORLD_MODELS:
        return WORLD_MODELS[name].config_cls
    if name in trainers:
        return trainers[name]
    raise UserError(f"config show {name!r}: name an algorithm ({', '.join(sorted(ALGORITHMS))}), a world model "
                    f"({', '.join(sorted(WORLD_MODELS))}) or a trainer ({', '.join(trainers)})")


@config_group.command("show")
@click.argument("name")
@click.option("--preset", default="small", show_default=True, help="tiny | small | paper.")
@click.option("-o", "overrides", multiple=True, help="Show the config with these fields set (key=value).")
def config_show(name, preset, overrides):
    """Print every field of NAME's config (an algorithm, a world model, 'train-model' or
    'imagine') at a preset: name, value, accepted values and docstring. Any of them can be set
    with -o key=value on train-model / imagine."""
    import textwrap

    from wmil.config import build_config, describe, parse_overrides

    cls = _config_class(name)
    config = build_config(cls, preset, parse_overrides(overrides), name)
    click.echo(f"{name} ({cls.__name__}), preset {preset!r}:")
    for field, value, accepted, doc in describe(config):
        own = "   (this component's default, not the shared block's)" if field in cls.DEFAULTS else ""
        click.echo(f"  {field} = {value!r}   [{accepted}]{own}")
        for line in textwrap.wrap(doc, 96):
            click.echo(f"      {line}")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """wmil's own warnings as one ``warning:`` line; others as Python shows them."""
    if issubclass(category, WmilWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def main(argv=None) -> int:
    """Entry point: UserError (and usage errors, and OS errors on the user's paths) → one line
    on stderr and exit code 2, never a traceback."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", WmilWarning)
        warnings.showwarning = _show_warning
        try:
            cli.main(args=argv, prog_name="wmil", standalone_mode=False)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            return 2
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            return 1
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"error: {' '.join(exc.format_message().split())}{where}", err=True)
            return exc.exit_code
        except click.ClickException as exc:
            click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            return exc.exit_code
        except OSError as exc:  # a path of the user's that cannot be read or written (disk full, permissions)
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc}", err=True)
            return 2
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            return 130
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
