"""Run by the FSDP tests under torchrun: several runs, one after the other, in one launch.

    fsdp_worker.py JOBS_JSON

JOBS_JSON is a list; each job is {"config": RunConfig dict, "resume": bool, "interrupt_after": K}
(``train``), {"cli": [arguments of the dsee command]} (``dsee.cli.main``), or {"probe": RunConfig
dict, "out": folder} (``probe``: the model ``dsee train`` builds, described per process in
``out/rank<R>.json``). An interruption after K optimizer steps (the test hook; the checkpoint is
written first) is expected, and the next job may resume that run.

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



def probe(config: RunConfig, out: str) -> None:
    """Build the run's model as ``dsee train`` does (``streamed.build_streamed_model``) with transformers'
    ``from_pretrained`` made to fail (nothing may load the whole model), and describe this process's part."""
    from pathlib import Path

    import torch
    import transformers

    from dsee.adapters.inject import dsee_layers
    from dsee.train.loading import local_rows
    from dsee.train.pipeline import load_task_data, load_tokenizer
    from dsee.train.streamed import build_streamed_model

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained was called: the whole model was loaded")

    data, tokenizer = load_task_data(config), load_tokenizer(config.model)
    torch.manual_seed(config.seed)
    saved = transformers.PreTrainedModel.from_pretrained
    transformers.PreTrainedModel.from_pretrained = classmethod(refuse)
    try:
        built = build_streamed_model(config, data, config.model, tokenizer, mixed_precision="no")
    finally:
        transformers.PreTrainedModel.from_pretrained = saved
    model = built.model
    held = {n: local_rows(p)[0].numel() for n, p in model.named_parameters()}
    report = {"rank": dist.get_rank(), "held": held, "shape": {n: list(p.shape) for n, p in model.named_parameters()},
              "meta": [n for n, p in model.named_parameters() if p.is_meta],
              "supports": {f"{n}.{layer.delta_name(s)}": d.sparse_indices.tolist()
                           for n, layer in dsee_layers(model) for s, d, _ in layer.deltas()},
              "fingerprint": built.facts.get("fingerprint"), "figures": built.facts.get("figures")}
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps(report))


for job in json.loads(sys.argv[1]):
    if "probe" in job:
        probe(RunConfig(**job["probe"]), job["out"])
        continue
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
