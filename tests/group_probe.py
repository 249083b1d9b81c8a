"""Run the CLI inside a torchrun process, then record whether the process group outlived the run.

    python -m torch.distributed.run ... tests/group_probe.py REPORT_DIR CLI_ARGS...

Writes REPORT_DIR/rank<N>.json: the CLI's exit code, whether the group was up when the
run was built, and whether it still is after it.
"""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from xnortrain import train
from xnortrain.__main__ import main

report_dir, argv = Path(sys.argv[1]), sys.argv[2:]
seen = {"during": False}
build_run = train.build_run


def build_run_and_look(*args, **kwargs):
    seen["during"] = dist.is_initialized() and dist.get_world_size() == 2
    return build_run(*args, **kwargs)


train.build_run = build_run_and_look
code = main(argv)
rank = os.environ["RANK"]
(report_dir / f"rank{rank}.json").write_text(json.dumps({"exit": code, "during": seen["during"],
                                                         "after": dist.is_initialized()}))
sys.exit(code)
