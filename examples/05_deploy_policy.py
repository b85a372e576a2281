"""Load a trained policy and run it in your own gymnasium loop. A latent policy filters each
real observation through the world model, so call ``reset()`` at the start of every episode."""

import gymnasium as gym

import wmil
from common import options

args = options(__doc__)
policy = wmil.load_policy(args.out / "ditto")
env = gym.make("CartPole-v1", max_episode_steps=50 if args.tiny else 500)
for episode in range(2):
    obs, _ = env.reset(seed=episode)
    policy.reset()
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
        total += float(reward)
        done = terminated or truncated
    print(f"episode {episode}: return {total}")
env.close()
