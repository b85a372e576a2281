"""World-model update throughput on the CPU, against a plainly written reference RSSM.

One update = forward over the whole sequence + loss + backward + Adam step, on synthetic data.
For each configuration the script measures, interleaved in the same process so that machine
noise hits both alike:

* frames/s (B×T per second, median of ``--rounds`` rounds of ``--updates`` updates) of the
  wmil ``rssm`` and of a reference RSSM written the way typical implementations are (every
  step's prior and posterior computed inside the loop from concatenated inputs, both sampled
  with ``torch.distributions``, the KL balanced with two ``kl_divergence`` calls);
* FLOPs per update (``torch.utils.flop_counter.FlopCounterMode`` over forward + backward) and the
  achieved GFLOP/s as a fraction of the measured fp32 GEMM rate on the same threads.

Usage::

    python -m benchmarks.world_model                      # vector-small and pixel-small
    python -m benchmarks.world_model --configs pixel-paper --rounds 2 --no-reference

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

from wmil.types import DataSpec, SequenceBatch
from wmil.world_models import config_for, make_world_model, total_loss
from wmil.nets import MLP, preprocess_pixels

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


CONFIGS = {
    "vector-small": BenchConfig("vector-small", (8,), 50, 50, "small", 4000.0,
                                "dreamerv3-torch 2,007 f/s"),
    "pixel-small": BenchConfig("pixel-small", (1, 64, 64), 16, 50, "small", 1040.0,
                               "DITTO code 520 f/s"),
    "pixel-paper": BenchConfig("pixel-paper", (1, 64, 64), 50, 50, "paper", 160.0,
                               "DITTO code 81 f/s"),
}
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


def wmil_update(model, optimizer, batch):
    losses, _, _ = model.loss(batch)
    loss = total_loss(losses, model.loss_scales)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def reference_update(model, optimizer, batch):
    loss = model.loss(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def count_flops(update, model, optimizer, batch) -> int:
    """FLOPs of forward + backward (the Adam step's elementwise work is not counted)."""
    counter = FlopCounterMode(display=False)
    with counter:
        update(model, optimizer, batch)
    return counter.get_total_flops()


def gemm_rate(size: int = 1024, repeats: int = 30) -> float:
    """Median fp32 GEMM FLOP/s on the current thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times)


def timed(update, model, optimizer, batch, updates: int) -> float:
    start = time.perf_counter()
    for _ in range(updates):
        update(model, optimizer, batch)
    return (time.perf_counter() - start) / updates


def bench(config: BenchConfig, rounds: int, updates: int, reference: bool) -> dict:
    spec = DataSpec(config.obs_shape, "uint8" if len(config.obs_shape) == 3 else "float32",
                    action_dim=ACTIONS, discrete=True)
    model_config = config_for("rssm", config.preset)
    batch = make_batch(spec, config.batch, config.steps)
    runners = {}
    torch.manual_seed(0)
    model = make_world_model("rssm", spec, model_config)
    runners["wmil"] = (wmil_update, model, torch.optim.Adam(model.parameters(), 3e-4, eps=1e-5))
    if reference:
        torch.manual_seed(0)
        ref = ReferenceRSSM(spec, model_config)
        runners["reference"] = (reference_update, ref, torch.optim.Adam(ref.parameters(), 3e-4, eps=1e-5))
    result = {"config": config, "params": sum(p.numel() for p in model.parameters())}
    for name, (update, net, optimizer) in runners.items():
        result[f"{name}_flops"] = count_flops(update, net, optimizer, batch)
        update(net, optimizer, batch)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):  # interleaved, so that load changes hit both
        for name, (update, net, optimizer) in runners.items():
            times[name].append(timed(update, net, optimizer, batch, updates))
    frames = config.batch * config.steps
    if reference:  # per-round ratios: each pair ran back to back, under similar load
        result["ratio_rounds"] = [r / w for w, r in zip(times["wmil"], times["reference"])]
    for name in runners:
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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per model (median)")
    parser.add_argument("--updates", type=int, default=3, help="updates per timed round")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference RSSM")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "world_model.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine()
    gemm = gemm_rate()
    print(f"GEMM fp32 1024^3 on {args.threads} threads: {gemm / 1e9:.1f} GFLOP/s", flush=True)

    rows = []
    for name in args.configs.split(","):
        result = bench(CONFIGS[name], args.rounds, args.updates, not args.no_reference)
        rows.append(result)
        line = f"{name}: wmil {result['wmil_fps']:.0f} f/s"
        if "reference_fps" in result:
            line += f", reference {result['reference_fps']:.0f} f/s, ratio (median of rounds) " \
                    f"{statistics.median(result['ratio_rounds']):.2f}"
        print(line, flush=True)

    command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]) \
        if argv is None else "python -m benchmarks.world_model " + " ".join(argv)
    lines = [
        "# World-model update throughput (CPU)",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- commit: `{info['commit']}`",
        f"- CPU: {info['cpu']}, {info['cores']} cores; torch {info['torch']}, "
        f"{args.threads} threads; 1-min load average at start {info['load']:.2f} "
        "(shared machine)",
        f"- command: `{command}` (from the repository root)",
        f"- measured fp32 GEMM rate (1024³, {args.threads} threads, median): "
        f"**{gemm / 1e9:.1f} GFLOP/s**",
        f"- one update = forward over the sequence + loss + backward + Adam step; frames = B×T; "
        f"median of {args.rounds} rounds × {args.updates} updates, wmil and reference "
        "interleaved in the same process; FLOPs counted with `FlopCounterMode` (forward + "
        "backward; matmuls and convolutions)",
        "",
        "Medians (and, in brackets, the best round, the closest to an unloaded machine); the "
        "ratio is the median of the per-round ratios (each round runs wmil and the reference "
        "back to back).",
        "",
        "| config | B×T | wmil frames/s | reference frames/s | ratio | target | best peer "
        "| GFLOP/update | wmil GFLOP/s | % of GEMM rate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["config"]
        ref = (f"{r['reference_fps']:,.0f} ({r['reference_fps_best']:,.0f})"
               if "reference_fps" in r else "—")
        ratio = f"{statistics.median(r['ratio_rounds']):.2f}×" if "ratio_rounds" in r else "—"
        met = "met" if r["wmil_fps"] >= c.target else "not met"
        lines.append(
            f"| {c.name} (obs {c.obs_shape}, rssm `{c.preset}`) | {c.batch}×{c.steps} "
            f"| **{r['wmil_fps']:,.0f}** ({r['wmil_fps_best']:,.0f}) | {ref} | {ratio} | ≥ {c.target:,.0f} ({met}) | {c.peer} "
            f"| {r['wmil_flops'] / 1e9:.2f} | {r['wmil_gflops']:.1f} "
            f"| {100 * r['wmil_gflops'] / (gemm / 1e9):.0f} % |")
    lines += ["", "Per-round frames/s (spread on this shared machine):", ""]
    for r in rows:
        for name in ("wmil", "reference"):
            if f"{name}_fps_all" in r:
                values = ", ".join(f"{v:,.0f}" for v in r[f"{name}_fps_all"])
                lines.append(f"- {r['config'].name} {name}: {values}")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
