"""Shared command-line options of the examples: ``--tiny`` (a fast smoke run) and ``--out``."""

import argparse
from pathlib import Path


def options(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path("runs/examples"), help="where the run directories go")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and budgets (a smoke run, not a result)")
    return parser.parse_args()
