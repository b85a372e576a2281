#!/bin/sh
# --wmil-python for ../shared/bench/peer_throughput.py: its wmil worker with bf16 autocast
# (see peer_bf16_worker.py). WMIL_PYTHON: the interpreter that has wmil's dependencies.
exec "${WMIL_PYTHON:-python3}" "$(dirname "$0")/peer_bf16_worker.py" "$@"
