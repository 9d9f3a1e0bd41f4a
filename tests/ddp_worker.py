"""Run by the distributed test under torchrun: train, then save this rank's final trainable state."""

import json
import os
import sys

import torch

from dsee.train.checkpoint import trainable_state
from dsee.train.loop import train
from dsee.train.run import RunConfig

config = RunConfig(**json.loads(sys.argv[1]))
metrics, model = train(config, show_progress=False, return_model=True)
torch.save(trainable_state(model), os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
