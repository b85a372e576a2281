"""Train DITTO entirely inside the world model from one expert demonstration, and behaviour
cloning on the same demonstration; the environment is not touched."""

import wmil
from common import options

args = options(__doc__)
preset = "tiny" if args.tiny else "small"
steps = 10 if args.tiny else 500

ditto = wmil.train_policy("ditto", args.out / "rssm", "examples/cartpole-expert-v0", expert_episodes=1,
                          preset=preset, steps=steps, out=args.out / "ditto", progress=not args.tiny,
                          overrides={"actor_lr": "1e-3", "critic_lr": "1e-3"})
bc = wmil.train_policy("bc", None, "examples/cartpole-expert-v0", expert_episodes=1, preset=preset,
                       steps=steps * 2, out=args.out / "bc", progress=not args.tiny)
print(f"trained {type(ditto).__name__} (DITTO) and {type(bc).__name__} (BC) in {args.out}")
