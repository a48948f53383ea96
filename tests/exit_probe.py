"""`python -m tests.exit_probe ARGS` runs `openvtp ARGS`, then exits 3 if the command left distributed state
for interpreter shutdown to tear down (in no fixed order, with gloo's threads still running): a process group,
or a DeviceMesh (which holds its group) kept by DTensor's caches."""
import gc
import sys

from openvtp.cli import main

rc = main(sys.argv[1:])
gc.collect()
import torch.distributed as torch_dist  # noqa: E402
from torch.distributed.device_mesh import DeviceMesh  # noqa: E402

left = [f"{type(o).__name__} {o}" for o in gc.get_objects() if isinstance(o, DeviceMesh)]
if torch_dist.is_initialized():
    left.append("the process group")
if left:
    print(f"exit probe: still alive after the command: {', '.join(left)}", file=sys.stderr)
    sys.exit(3)
sys.exit(rc)
