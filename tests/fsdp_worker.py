"""Run by the FSDP tests under torchrun: several runs, one after the other, in one launch.

    fsdp_worker.py JOBS_JSON

JOBS_JSON is a list; each job is {"config": RunConfig dict, "resume": bool, "interrupt_after": K}
(``train``) or {"cli": [arguments of the dsee command]} (``dsee.cli.main``). An interruption after
K optimizer steps (the test hook; the checkpoint is written first) is expected, and the next job
may resume that run.

``train`` ends with Accelerate's ``end_training``, which destroys the process group; one launch
per run would cost the suite a process start-up (~15 s on two busy cores) per run, so the group is
kept until the last job here. Nothing else is changed.
"""

import json
import sys

import accelerate
import torch.distributed as dist

from dsee.cli import main
from dsee.train.loop import Interrupted, train
from dsee.train.run import RunConfig

accelerate.Accelerator.end_training = lambda self: None

for job in json.loads(sys.argv[1]):
    if "cli" in job:
        code = main(job["cli"])
        if code != 0:
            raise SystemExit(f"dsee {' '.join(job['cli'])} exited with {code}")
        continue
    try:
        train(RunConfig(**job["config"]), resume=job.get("resume", False),
              interrupt_after=job.get("interrupt_after"), show_progress=False)
    except Interrupted:
        if job.get("interrupt_after") is None:
            raise
if dist.is_initialized():
    dist.destroy_process_group()
