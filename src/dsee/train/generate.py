"""Decoding with a fine-tuned decoder: batched beam search or greedy, and E2E-style scoring.

    generate_texts(model, tokenizer, sources, beams=10, length_penalty=0.8, no_repeat_ngram=4)
    evaluate_generation_run(RUN, split="validation")   decode the dev (or test) set and score it

Prompts are ``source + PROMPT_END`` (``textgen``), left-padded so that every sequence of a batch
continues from its last position; the output is the first non-empty line of the text generated after
the prompt (up to the end token). Beam search defaults follow LoRA's E2E recipe (paper §4: beam
10, length penalty 0.8, no repeated 4-grams). A model with DSEE adapters is merged first: the same
function, and decoding does not pay for the adapter branches.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.inject import dsee_layers, merge_dsee
from ..files import atomic_write_text
from ..options import option
from .textgen import prompt_ids

DECODING = "decoding (generation runs)"


@dataclass
class DecodingSettings:
    """Beam search (beams 1: greedy); the defaults are LoRA's E2E recipe (paper §4)."""

    beams: int = option(10, "beam size (1: greedy)", group=DECODING, positive=True)
    length_penalty: float = option(0.8, "beam search length penalty", group=DECODING)
    no_repeat_ngram: int = option(4, "no n-gram of this size twice (0: allowed)", group=DECODING)
    max_new_tokens: int = option(64, "longest output", group=DECODING, positive=True)
    batch_size: int = option(8, "sources decoded together", group=DECODING, positive=True)

    def __post_init__(self) -> None:
        for name in ("beams", "max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} {value!r}: must be an integer >= 1")
        if self.no_repeat_ngram < 0:
            raise ValueError(f"--no-repeat-ngram {self.no_repeat_ngram}: must be >= 0")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"--length-penalty {self.length_penalty}: must be a finite number")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def generate_texts(model: nn.Module, tokenizer, sources: list[str], *, beams: int = 10, length_penalty: float = 0.8,
                   no_repeat_ngram: int = 4, max_new_tokens: int = 64, batch_size: int = 8,
                   max_source_tokens: int = 64, show_progress: bool = False) -> list[str]:
    """One output string per source (beams=1: greedy)."""
    from tqdm.auto import tqdm

    DecodingSettings(beams, length_penalty, no_repeat_ngram, max_new_tokens, batch_size)  # validates
    if not sources:
        raise ValueError("nothing to generate: no input")
    if dsee_layers(model):
        merge_dsee(model)
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    outputs: list[str] = []
    for start in tqdm(range(0, len(sources), batch_size), disable=not show_progress, desc="generate", unit="batch"):
        prompts = [prompt_ids(tokenizer, s, max_source_tokens)[0] for s in sources[start:start + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: generation continues from the last column
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        generated = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), num_beams=beams, do_sample=False,
            length_penalty=length_penalty if beams > 1 else 1.0, no_repeat_ngram_size=no_repeat_ngram,
            max_new_tokens=max_new_tokens, early_stopping=beams > 1, pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row in generated[:, width:]:
            text = tokenizer.decode(row, skip_special_tokens=True)
            outputs.append(text.strip().split("\n")[0].strip())  # the first non-empty line
    return outputs


def evaluate_generation_run(run: str | Path, *, split: str = "validation", data_dir: str | None = None,
                            max_items: int | None = None, beams: int = 10, length_penalty: float = 0.8,
                            no_repeat_ngram: int = 4, max_new_tokens: int = 64, batch_size: int = 8,
                            show_progress: bool = True) -> dict[str, Any]:
    """Decode one split of a generation run's data and score it (``dsee.evaluation.nlg.score``).

    Writes ``RUN/predictions_<split>.txt`` (one output per distinct source, in order) and
    ``RUN/scores_<split>.json``; returns the scores with the decoding settings.
    """
    from ..evaluation import nlg
    from ..models import resolve_model
    from .pipeline import load_tokenizer, load_trained_model
    from .run import load_run_config
    from .textgen import load_e2e, load_pairs

    run = Path(run)
    config = load_run_config(run)
    if not config.is_generation:
        raise ValueError(f"{run} is not a text-generation run (task {config.task or config.train_file})")
    if data_dir is not None:
        config.data_dir = data_dir
    if config.task == "e2e":
        pairs = load_e2e(config.data_dir, split)
    elif split in ("validation", "dev"):
        pairs = load_pairs(config.validation_file, config.source_column, config.target_column)
    else:
        raise ValueError(f"split {split!r}: a run on your own files has only its validation file")
    sources, references = pairs.grouped()
    if max_items is not None:
        sources, references = sources[:max_items], references[:max_items]
    tokenizer = load_tokenizer(resolve_model(config.model))
    model = load_trained_model(run, config, tokenizer=tokenizer)
    budget = config.max_source_tokens or config.max_length // 2
    hypotheses = generate_texts(model, tokenizer, sources, beams=beams, length_penalty=length_penalty,
                                no_repeat_ngram=no_repeat_ngram, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, max_source_tokens=budget, show_progress=show_progress)
    scores = nlg.score(hypotheses, references)
    result = {"split": split, "items": len(sources), "beams": beams, "length_penalty": length_penalty,
              "no_repeat_ngram": no_repeat_ngram, "max_new_tokens": max_new_tokens, "scores": scores}
    atomic_write_text(run / f"predictions_{split}.txt", "".join(h.replace("\n", " ") + "\n" for h in hypotheses))
    atomic_write_text(run / f"scores_{split}.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def read_sources(path: str | Path) -> list[str]:
    """The non-empty lines of a text file, one source each; ``-`` reads them from standard input."""
    import sys

    if str(path) == "-":
        data, where = sys.stdin.buffer.read(), "standard input"
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such input file" if not path.exists() else
                                    f"{path}: not a regular file (give a text file, or - for standard input)")
        data, where = path.read_bytes(), str(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    sources = [line.strip() for line in text.splitlines() if line.strip()]
    if not sources:
        raise ValueError(f"{where}: the input has no non-empty line")
    return sources


def generate_run_texts(run: str | Path, sources: list[str], decoding: DecodingSettings) -> list[str]:
    """Decode ``sources`` with a generation run's kept model (its own tokenizer and source budget)."""
    from .pipeline import load_run
    from .run import load_run_config

    config = load_run_config(run)
    if not config.is_generation:
        raise ValueError(f"{run} is not a text-generation run (trained on {config.task or config.train_file})")
    config, model, tokenizer = load_run(run)
    return generate_texts(model, tokenizer, sources, **decoding.to_dict(),
                          max_source_tokens=config.max_source_tokens or config.max_length // 2)
