"""Run the CLI inside a torchrun process, then record whether the process group outlived the run.

    python -m torch.distributed.run ... tests/group_probe.py REPORT_DIR CLI_ARGS...

Writes REPORT_DIR/rank<N>.json: the CLI's exit code, whether the group (and gloo's threads,
named pt_gloo_runloop and gloo_tcp_loop on Linux) were up when the run was built, whether
the group still is after it, and gloo's threads still running then: a freed group has
joined them.
"""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from xnortrain.__main__ import main
from xnortrain.train import loop as train

report_dir, argv = Path(sys.argv[1]), sys.argv[2:]
seen = {"during": False}
build_run = train.build_run


def gloo_threads() -> list[str]:
    names = (Path(task, "comm").read_text().strip() for task in Path("/proc/self/task").iterdir())
    return sorted(name for name in names if "gloo" in name)


def build_run_and_look(*args, **kwargs):
    seen["during"] = dist.is_initialized() and dist.get_world_size() == 2
    seen["gloo_threads_during"] = bool(gloo_threads())
    return build_run(*args, **kwargs)


train.build_run = build_run_and_look
code = main(argv)
rank = os.environ["RANK"]
(report_dir / f"rank{rank}.json").write_text(json.dumps({**seen, "exit": code,
                                                         "after": dist.is_initialized(),
                                                         "gloo_threads": gloo_threads()}))
sys.exit(code)
