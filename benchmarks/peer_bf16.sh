#!/bin/sh
# --wmil-python for ../shared/bench/peer_throughput.py: its wmil worker with bf16 autocast
# (see peer_bf16_worker.py). WMIL_PYTHON: the interpreter that has wmil's dependencies.
# The worker imports wmil from this checkout (the harness's --wmil .), put on PYTHONPATH here.
root="$(cd "$(dirname "$0")/.." && pwd)"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "${WMIL_PYTHON:-python3}" "$root/benchmarks/peer_bf16_worker.py" "$@"
