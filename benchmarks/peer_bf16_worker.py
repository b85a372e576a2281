"""The wmil worker of the shared peer harness (``../shared/bench/peer_throughput.py``) with the
world model's loss under bf16 autocast, exactly as ``wmil train-model --precision bf16`` runs
it (``wmil.precision.autocast`` around ``model.loss``; backward, clip and Adam outside). The
harness itself times fp32 only; this wraps its ``make_world_model`` call and changes nothing
else. Used through ``peer_bf16.sh`` as the harness's ``--wmil-python``::

    WMIL_PYTHON=.venv/bin/python python ../shared/bench/peer_throughput.py --wmil . \\
        --wmil-python benchmarks/peer_bf16.sh --ditto DITTO --dreamerv3 DV3 ...

The harness starts a worker as ``<wmil-python> peer_throughput.py --worker wmil ... --src DIR``;
``peer_bf16.sh`` puts this checkout on ``PYTHONPATH`` (the ``--src`` the harness passes for
``--wmil .``), so wmil is imported from it.
"""

import importlib.util
import sys

import wmil.world_models as world_models
from wmil.precision import autocast

harness_path, argv = sys.argv[1], sys.argv[2:]

make_world_model = world_models.make_world_model


def make_bf16(*args, **kwargs):
    model = make_world_model(*args, **kwargs)
    plain = model.loss

    def loss(batch):
        with autocast("cpu", "bf16"):
            return plain(batch)

    model.loss = loss
    return model


world_models.make_world_model = make_bf16  # the harness imports it from there when it builds
print("peer_bf16_worker: the wmil world model's loss runs under bf16 autocast", file=sys.stderr)
spec = importlib.util.spec_from_file_location("peer_throughput", harness_path)
harness = importlib.util.module_from_spec(spec)
sys.modules["peer_throughput"] = harness  # its dataclasses look their module up
spec.loader.exec_module(harness)
harness.main(argv)
