"""Record CartPole datasets with the scripted expert: a mixed-quality world dataset (ε-expert
with ε ∈ {0, 0.3, 0.6, 1}) for the world model, and expert demonstrations for imitation.
Datasets are Minari datasets in $MINARI_DATASETS_PATH (default ~/.minari/datasets)."""

import wmil
from common import options

args = options(__doc__)
episodes = 8 if args.tiny else 100
steps = 40 if args.tiny else None  # the environment's own time limit (500) unless tiny

world = wmil.build_dataset(wmil.BuildConfig(
    name="examples/cartpole-world-v0", env="CartPole-v1", policy="expert", epsilon=[0.0, 0.3, 0.6, 1.0],
    episodes=episodes, max_episode_steps=steps, seed=0), overwrite=True, progress=not args.tiny)
expert = wmil.build_dataset(wmil.BuildConfig(
    name="examples/cartpole-expert-v0", env="CartPole-v1", policy="expert", episodes=4,
    max_episode_steps=steps, seed=10_000), overwrite=True, progress=not args.tiny)

for dataset in (world, expert):
    print(dataset)
    summary = dataset.summary()
    print(f"  return {summary['return']}, reference scores {dataset.ref_min_score} / {dataset.ref_max_score}")
