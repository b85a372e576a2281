"""Train a DreamerV2-style RSSM on the world dataset (all of it: mixed quality is the point) and
report how well it predicts 15 steps ahead with the logged actions, against the naive
prediction "the observation does not change"."""

import wmil
from common import options

args = options(__doc__)
overrides = {"batch_size": "16", "seq_len": "32", "eval_every": "500"}
if args.tiny:
    overrides.update(batch_size="4", seq_len="16", eval_every="20", log_every="10")
world_model = wmil.train_world_model("examples/cartpole-world-v0", model="rssm",
                                     preset="tiny" if args.tiny else "small", steps=40 if args.tiny else 1500,
                                     out=args.out / "rssm", overrides=overrides, progress=not args.tiny)

report = wmil.evaluate_world_model(args.out / "rssm")
for h in (1, 5, 15):
    print(f"open-loop MSE at {h:>2} steps: {report[f'open_loop/ratio_h{h}']:.3f} × repeating the last observation")
print(f"latent features: {world_model.feature_dim} numbers per step")
