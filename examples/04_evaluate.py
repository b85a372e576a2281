"""Score the DITTO and BC policies in the real environment: return, expert-normalised score
(0 = random, 1 = expert) and the DITTO paper's offline metrics."""

import wmil
from common import options

args = options(__doc__)
episodes = 2 if args.tiny else 20
for name in ("ditto", "bc"):
    report = wmil.evaluate_policy(args.out / name, episodes=episodes, progress=False)
    offline = {k: round(v, 3) for k, v in report.items() if k.startswith("eval/")}
    print(f"{name:>5}: return {report['return_mean']:7.1f} ± {report['return_stderr']:5.1f}, "
          f"normalised {report.get('normalized_score', float('nan')):.2f}, offline {offline}")
