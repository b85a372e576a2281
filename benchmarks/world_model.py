"""World-model update throughput on the CPU: wmil's ``rssm`` in fp32 and bf16, against a
plainly written reference RSSM.

One update = what ``wmil train-model`` does per step on a batch: forward over the whole
sequence + loss (under bf16 autocast for ``bf16``, as ``--precision bf16`` runs it) + backward +
gradient clip + Adam step (fused for wmil, as train-model steps), on synthetic data. For each
configuration the script measures, interleaved in the same process (round-robin) so that
machine noise hits all alike:

* frames/s (B×T per second, median of ``--rounds`` rounds of ``--updates`` updates) of the
  wmil ``rssm`` in each of ``--precisions`` (and with its reward and continue heads on, with
  ``--heads``: the like-for-like reference for dreamerv3-torch), and of a reference RSSM written
  the way typical implementations are (every step's prior and posterior computed inside the
  loop from concatenated inputs, both sampled with ``torch.distributions``, the KL balanced
  with two ``kl_divergence`` calls; fp32);
* FLOPs per update (``torch.utils.flop_counter.FlopCounterMode`` over forward + backward) and the
  achieved GFLOP/s as a fraction of the measured GEMM rate on the same threads, in the row's
  precision (fp32, or bf16 GEMMs for bf16).

The peers (the DITTO authors' code, dreamerv3-torch) are timed side by side with the shared
harness ``../shared/bench/peer_throughput.py``; its table is kept in
``benchmarks/results/peer_throughput.md``.

Usage::

    python -m benchmarks.world_model                      # vector-small and pixel-small, fp32 and bf16
    python -m benchmarks.world_model --configs pixel-paper --rounds 3 --no-reference
    python -m benchmarks.world_model --device cuda --configs vector-small,pixel-small,pixel-paper \
        --out benchmarks/results/world_model-gpu.md   # on a GPU machine: the single-GPU rate

Writes ``benchmarks/results/world_model.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributions as td
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from wmil.nets import MLP, preprocess_pixels
from wmil.nets import adam as wmil_adam
from wmil.precision import PRECISIONS, autocast
from wmil.types import DataSpec, SequenceBatch
from wmil.world_models import config_for, make_world_model, total_loss

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BenchConfig:
    name: str
    obs_shape: tuple[int, ...]
    batch: int
    steps: int
    preset: str
    target: float  # frames/s wanted for the wmil rssm (the project's throughput target)
    peer: str      # the best peer's figure measured with the peer harness, for the table


# Targets of issue 17 / BENCHMARKS.md, from the peer figures measured side by side with the
# shared harness (2 threads, fp32): ≥ 2.5× the best peer in fp32 at every config, ≥ 4× with
# bf16 on the pixel configs (pixel-paper ≥ 450 f/s), vector-small with heads ≥ 4×
# dreamerv3-torch. Frames/s on this machine; the ratios themselves come from the harness.
CONFIGS = {
    "vector-small": BenchConfig("vector-small", (8,), 50, 50, "small", 2.5 * 2810,
                                "dreamerv3-torch 2,810 f/s (with heads: wmil + heads ≥ 11,240)"),
    "pixel-small": BenchConfig("pixel-small", (1, 64, 64), 16, 50, "small", 2.5 * 686,
                               "dreamerv3-torch 686 f/s, DITTO code 666 (bf16: ≥ 2,744)"),
    "pixel-paper": BenchConfig("pixel-paper", (1, 64, 64), 50, 50, "paper", 2.5 * 116,
                               "DITTO code 116 f/s (bf16: ≥ 464)"),
}
BF16_TARGETS = {"pixel-small": 4 * 686, "pixel-paper": max(4 * 116, 450)}
HEADS_TARGET = 4 * 2810  # vector-small, wmil with reward and continue heads
ACTIONS = 6  # discrete, one-hot


# ---------------------------------------------------------------------- reference RSSM


class PlainConvEncoder(nn.Module):
    """DreamerV2's pixel encoder as usually written (default memory format)."""

    def __init__(self, channels: int, depth: int):
        super().__init__()
        layers, width = [], channels
        for mult in (1, 2, 4, 8):
            layers += [nn.Conv2d(width, depth * mult, 4, stride=2), nn.ELU()]
            width = depth * mult
        self.net = nn.Sequential(*layers)
        self.out_dim = 32 * depth

    def forward(self, obs):
        lead = obs.shape[:-3]
        return self.net(obs.reshape(-1, *obs.shape[-3:])).reshape(*lead, self.out_dim)


class PlainConvDecoder(nn.Module):
    """DreamerV2's pixel decoder as usually written: linear to a 1x1 map, four transposed
    convolutions."""

    def __init__(self, in_dim: int, channels: int, depth: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, 32 * depth)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(32 * depth, 4 * depth, 5, stride=2), nn.ELU(),
            nn.ConvTranspose2d(4 * depth, 2 * depth, 5, stride=2), nn.ELU(),
            nn.ConvTranspose2d(2 * depth, depth, 6, stride=2), nn.ELU(),
            nn.ConvTranspose2d(depth, channels, 6, stride=2))
        self.channels = channels

    def forward(self, features):
        lead = features.shape[:-1]
        x = self.linear(features.reshape(-1, features.shape[-1]))
        x = self.net(x.reshape(-1, x.shape[-1], 1, 1))
        return x.reshape(*lead, self.channels, 64, 64)


class ReferenceRSSM(nn.Module):
    """DreamerV2's RSSM as typical implementations write it: everything per step in the loop,
    plain conv nets in the default memory format.

    Same layer sizes and the same loss (unit-Gaussian reconstruction + balanced KL) as the wmil
    ``rssm``, so the FLOPs match; only the organisation differs.
    """

    def __init__(self, spec: DataSpec, c):
        super().__init__()
        self.spec, self.c = spec, c
        self.stoch, self.classes = c.stoch, c.classes
        S = c.stoch * c.classes
        if spec.pixels:
            self.encoder = PlainConvEncoder(spec.obs_shape[0], c.cnn_depth)
        else:
            self.encoder = MLP(spec.obs_shape[0], None, c.mlp_layers, c.mlp_units)
        self.img_in = nn.Linear(S + spec.action_dim, c.hidden)
        self.gru = nn.Linear(c.hidden + c.deter, 3 * c.deter, bias=False)
        self.gru_norm = nn.LayerNorm(3 * c.deter)
        self.img_out = nn.Linear(c.deter, c.hidden)
        self.img_dist = nn.Linear(c.hidden, S)
        self.obs_out = nn.Linear(c.deter + self.encoder.out_dim, c.hidden)
        self.obs_dist = nn.Linear(c.hidden, S)
        F_ = c.deter + S
        if spec.pixels:
            self.decoder = PlainConvDecoder(F_, spec.obs_shape[0], c.cnn_depth)
        else:
            self.decoder = MLP(F_, spec.obs_shape[0], c.mlp_layers, c.mlp_units)

    def dist(self, logits):
        logits = logits.reshape(*logits.shape[:-1], self.stoch, self.classes)
        return td.Independent(td.OneHotCategoricalStraightThrough(logits=logits), 1)

    def gru_cell(self, x, h):
        parts = self.gru_norm(self.gru(torch.cat([x, h], -1)))
        reset, cand, update = torch.split(parts, [self.c.deter] * 3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1)
        return update * cand + (1 - update) * h

    def img_step(self, prev, prev_action):
        x = F.elu(self.img_in(torch.cat([prev["stoch"], prev_action], -1)))
        deter = self.gru_cell(x, prev["deter"])
        logits = self.img_dist(F.elu(self.img_out(deter)))
        stoch = self.dist(logits).rsample().flatten(-2)
        return {"deter": deter, "stoch": stoch, "logits": logits}

    def obs_step(self, prev, prev_action, embed, is_first):
        mask = (1.0 - is_first.float()).unsqueeze(-1)
        prev = {k: v * mask for k, v in prev.items()}
        prev_action = prev_action * mask
        prior = self.img_step(prev, prev_action)
        x = F.elu(self.obs_out(torch.cat([prior["deter"], embed], -1)))
        logits = self.obs_dist(x)
        stoch = self.dist(logits).rsample().flatten(-2)
        post = {"deter": prior["deter"], "stoch": stoch, "logits": logits}
        return post, prior

    def loss(self, batch: SequenceBatch):
        obs = preprocess_pixels(batch.obs) if self.spec.pixels else batch.obs
        embed = self.encoder(obs)
        B, T = batch.is_first.shape
        S = self.stoch * self.classes
        state = {"deter": torch.zeros(B, self.c.deter), "stoch": torch.zeros(B, S),
                 "logits": torch.zeros(B, S)}
        posts, priors = [], []
        for t in range(T):
            state, prior = self.obs_step(state, batch.prev_action[:, t], embed[:, t],
                                         batch.is_first[:, t])
            posts.append(state)
            priors.append(prior)
        post = {k: torch.stack([p[k] for p in posts], 1) for k in posts[0]}
        prior = {k: torch.stack([p[k] for p in priors], 1) for k in priors[0]}
        feat = torch.cat([post["deter"], post["stoch"]], -1)
        recon = self.decoder(feat)
        dims = tuple(range(2, obs.dim()))
        obs_loss = 0.5 * (recon - obs).pow(2).sum(dims).mean()
        kl = td.kl_divergence
        lhs = kl(self.dist(post["logits"].detach()), self.dist(prior["logits"])).mean()
        rhs = kl(self.dist(post["logits"]), self.dist(prior["logits"].detach())).mean()
        kl_loss = self.c.kl_balance * lhs + (1 - self.c.kl_balance) * rhs
        return obs_loss + self.c.kl_scale * kl_loss


# ---------------------------------------------------------------------- measuring


def make_batch(spec: DataSpec, B: int, T: int) -> SequenceBatch:
    gen = torch.Generator().manual_seed(0)
    if spec.pixels:
        obs = torch.randint(0, 256, (B, T, *spec.obs_shape), dtype=torch.uint8, generator=gen)
    else:
        obs = torch.randn(B, T, *spec.obs_shape, generator=gen)
    action = F.one_hot(torch.randint(0, spec.action_dim, (B, T), generator=gen), spec.action_dim).float()
    prev_action = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    return SequenceBatch(obs=obs, prev_action=prev_action, action=action,
                         reward=torch.zeros(B, T), is_first=is_first,
                         is_terminal=torch.zeros(B, T, dtype=torch.bool),
                         action_mask=torch.ones(B, T, dtype=torch.bool))


def wmil_updater(precision: str, device: str = "cpu"):
    """The update of ``wmil train-model`` in ``precision`` (less the sampler and bookkeeping)."""

    def update(model, optimizer, batch):
        with autocast(device, precision):
            losses, _, _ = model.loss(batch)
        loss = total_loss(losses, model.loss_scales)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), model.config.grad_clip)
        optimizer.step()

    return update


def reference_update(model, optimizer, batch):
    loss = model.loss(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), model.c.grad_clip)
    optimizer.step()


def count_flops(update, model, optimizer, batch) -> int:
    """FLOPs of forward + backward (the Adam step's elementwise work is not counted)."""
    counter = FlopCounterMode(display=False)
    with counter:
        update(model, optimizer, batch)
    return counter.get_total_flops()


def synchronize(device: str) -> None:
    """Wait for queued GPU work (CUDA launches return before they finish); a no-op on the CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def gemm_rate(size: int = 1024, repeats: int = 30, dtype=torch.float32, device: str = "cpu") -> float:
    """Median GEMM FLOP/s in ``dtype`` on ``device`` (the current thread count on the CPU)."""
    if device.startswith("cuda"):
        size = max(size, 8192)  # a 1024³ product is launch-bound on a GPU
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times)


def timed(update, model, optimizer, batch, updates: int, device: str = "cpu") -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(updates):
        update(model, optimizer, batch)
    synchronize(device)
    return (time.perf_counter() - start) / updates


def bench(config: BenchConfig, rounds: int, updates: int, reference: bool, precisions: list[str],
          heads: bool, device: str = "cpu") -> dict:
    spec = DataSpec(config.obs_shape, "uint8" if len(config.obs_shape) == 3 else "float32",
                    action_dim=ACTIONS, discrete=True)
    model_config = config_for("rssm", config.preset)
    batch = make_batch(spec, config.batch, config.steps).to(device)
    runners = {}

    def adam(net, fused=True):
        # wmil's rows step with the fused kernel, as train-model does (wmil.nets.adam); the
        # reference steps with torch's default kernel, as plainly written trainers do
        if fused:
            return wmil_adam(net.parameters(), lr=3e-4, eps=1e-5)
        return torch.optim.Adam(net.parameters(), 3e-4, eps=1e-5)

    heads_here = heads and len(config.obs_shape) == 1  # the like-for-like row is vector-small's
    variants = [(p, False) for p in precisions] + ([(p, True) for p in precisions] if heads_here else [])
    for precision, with_heads in variants:
        torch.manual_seed(0)
        extra = dict(reward_head=True, continue_head=True) if with_heads else {}
        model = make_world_model("rssm", spec, config_for("rssm", config.preset, **extra)).to(device)
        name = f"wmil{' + heads' if with_heads else ''} {precision}"
        runners[name] = (wmil_updater(precision, device), model, adam(model), precision)
    if reference and config.preset != "paper":  # at paper size it takes minutes and adds nothing
        torch.manual_seed(0)
        ref = ReferenceRSSM(spec, model_config).to(device)
        runners["reference fp32"] = (reference_update, ref, adam(ref, fused=False), "fp32")
    result = {"config": config, "params": sum(p.numel() for p in runners[next(iter(runners))][1].parameters()),
              "runners": list(runners), "precision": {n: r[3] for n, r in runners.items()}}
    for name, (update, net, optimizer, _) in runners.items():
        result[f"{name}_flops"] = count_flops(update, net, optimizer, batch)
        update(net, optimizer, batch)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds):  # round-robin, order rotated, so that load changes hit all alike
        names = list(runners)
        for name in names[r % len(names):] + names[:r % len(names)]:
            update, net, optimizer, _ = runners[name]
            times[name].append(timed(update, net, optimizer, batch, updates, device))
    frames = config.batch * config.steps
    base = f"wmil {precisions[0]}"
    for name in runners:  # per-round ratios to the first wmil row: each round ran all back to back
        result[f"{name}_ratio_rounds"] = [b / t for b, t in zip(times[base], times[name])]
        seconds = statistics.median(times[name])
        result[f"{name}_fps"] = frames / seconds
        result[f"{name}_fps_all"] = [frames / s for s in times[name]]
        result[f"{name}_fps_best"] = frames / min(times[name])
        result[f"{name}_gflops"] = result[f"{name}_flops"] / seconds / 1e9
    return result


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "wmil", "benchmarks"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        if dirty:
            commit += " (+ uncommitted changes in wmil/ or benchmarks/)"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpu": cpu, "cores": os.cpu_count(), "commit": commit, "load": load,
            "torch": torch.__version__}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="vector-small,pixel-small",
                        help=f"comma-separated, from {sorted(CONFIGS)}")
    parser.add_argument("--precisions", default="fp32,bf16", help=f"comma-separated, from {PRECISIONS}")
    parser.add_argument("--heads", action="store_true",
                        help="also time wmil with its reward and continue heads on, for vector "
                             "observations (vector-small's like-for-like row against dreamerv3-torch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="cpu, or cuda / cuda:N: the single-GPU rate (the table then names the GPU; "
                             "compare with a CPU table of the same configs for the speed-up)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per model (median)")
    parser.add_argument("--updates", type=int, default=3, help="updates per timed round")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the reference RSSM (always skipped at paper size)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "world_model.md"))
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or any(p not in PRECISIONS for p in precisions):
        parser.error(f"--precisions: choose from {PRECISIONS}")
    torch.set_num_threads(args.threads)
    info = machine()
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no GPU here")
        info["cpu"] = f"GPU {torch.cuda.get_device_name(args.device)} (host CPU: {info['cpu']})"
    gemm = {p: gemm_rate(dtype=torch.float32 if p == "fp32" else torch.bfloat16, device=args.device)
            for p in PRECISIONS}
    where = args.device if args.device.startswith("cuda") else f"{args.threads} threads"
    print("GEMM on {}: {}".format(where, ", ".join(
        f"{p} {r / 1e9:.1f} GFLOP/s" for p, r in gemm.items())), flush=True)

    rows = []
    for name in args.configs.split(","):
        result = bench(CONFIGS[name], args.rounds, args.updates, not args.no_reference, precisions, args.heads,
                       args.device)
        rows.append(result)
        print(f"{name}: " + ", ".join(f"{n} {result[f'{n}_fps']:,.0f} f/s" for n in result["runners"]), flush=True)
    load_end = os.getloadavg()[0]

    command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]) \
        if argv is None else "python -m benchmarks.world_model " + " ".join(argv)
    lines = [
        f"# World-model update throughput ({'GPU' if args.device.startswith('cuda') else 'CPU'})",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- commit: `{info['commit']}`",
        f"- CPU: {info['cpu']}, {info['cores']} cores; torch {info['torch']}, "
        f"{args.threads} threads; 1-min load average {info['load']:.2f} at start, {load_end:.2f} at end "
        "(shared machine)",
        f"- command: `{command}` (from the repository root)",
        f"- measured GEMM rate ({'8192³, ' + args.device if args.device.startswith('cuda') else f'1024³, {args.threads} threads'}"
        ", median): "
        + ", ".join(f"**{p} {r / 1e9:.1f} GFLOP/s**" for p, r in gemm.items()),
        "- one update = `wmil train-model`'s step: forward over the sequence + loss (bf16: under "
        "autocast) + backward + grad clip + Adam step; frames = B×T; median of "
        f"{args.rounds} rounds × {args.updates} updates, all rows of a config round-robin in the "
        "same process; FLOPs counted with `FlopCounterMode` (forward + backward; matmuls and "
        "convolutions); % of GEMM rate against the rate of the row's precision",
        "",
        f"Medians (and, in brackets, the best round, the closest to an unloaded machine); the ratio "
        f"is the median of the per-round ratios to `wmil {precisions[0]}` (> 1: faster).",
        "",
        "| config | B×T | implementation | frames/s | ratio | target | GFLOP/update | GFLOP/s | % of GEMM rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["config"]
        for n in r["runners"]:
            precision = r["precision"][n]
            target = "—"
            if n == "wmil fp32":
                target = f"≥ {c.target:,.0f} ({'met' if r[f'{n}_fps'] >= c.target else 'not met'})"
            elif n == "wmil bf16" and c.name in BF16_TARGETS:
                wanted = BF16_TARGETS[c.name]
                target = f"≥ {wanted:,.0f} ({'met' if r[f'{n}_fps'] >= wanted else 'not met'})"
            elif n.startswith("wmil + heads") and c.name == "vector-small":
                target = f"≥ {HEADS_TARGET:,.0f} ({'met' if r[f'{n}_fps'] >= HEADS_TARGET else 'not met'})"
            lines.append(
                f"| {c.name} (obs {c.obs_shape}, rssm `{c.preset}`) | {c.batch}×{c.steps} | {n} "
                f"| **{r[f'{n}_fps']:,.0f}** ({r[f'{n}_fps_best']:,.0f}) "
                f"| {statistics.median(r[f'{n}_ratio_rounds']):.2f}× | {target} "
                f"| {r[f'{n}_flops'] / 1e9:.2f} | {r[f'{n}_gflops']:.1f} "
                f"| {100 * r[f'{n}_gflops'] / (gemm[precision] / 1e9):.0f} % |")
    lines += ["", "Targets (issue 17): fp32 ≥ 2.5× the best peer, bf16 ≥ 4× on the pixel configs "
              "(pixel-paper ≥ 450 f/s), vector-small with heads ≥ 4× dreamerv3-torch; the peer "
              "figures are those measured with the shared harness on 2 threads "
              "(`benchmarks/results/peer_throughput.md`): " + "; ".join(
                  f"{r['config'].name}: {r['config'].peer}" for r in rows) + ".",
              "", "Per-round frames/s (spread on this shared machine):", ""]
    for r in rows:
        for n in r["runners"]:
            values = ", ".join(f"{v:,.0f}" for v in r[f"{n}_fps_all"])
            lines.append(f"- {r['config'].name} {n}: {values}")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
