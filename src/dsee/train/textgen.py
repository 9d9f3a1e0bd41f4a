"""Data-to-text data for decoder models: E2E NLG and the user's own source/target files.

    load_e2e(data_dir, split)                 the official E2E CSVs (``mr,ref``)
    load_pairs(path, source_col, target_col)  CSV, TSV or JSON Lines (optionally .gz)
    encode_causal(pairs, tokenizer, ...)      prompt + target tokens; loss on the target only
    CausalCollator                            right-padded batches, labels -100 where not scored

One training example per row. For evaluation, rows with the same source are one item with several
references (``grouped``), as the E2E scorer counts them. The model sees ``source + PROMPT_END`` and
learns ``" " + target + eos`` (LoRA's E2E format "mr || ref", with the tokenizer's own end token).
Sources longer than the token budget are cut from the right with a warning; the count is kept
(``EncodedPairs.truncated``) and logged with the run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .data import DataError, seeded_subset, delimited_records, jsonl_records, require_file, table_format

PROMPT_END = " ||"
E2E_FILES = {"train": "trainset.csv.gz", "validation": "devset.csv", "test": "testset_w_refs.csv"}


@dataclass
class TextPairs:
    """Sources and targets of one split, row by row (a source may repeat: several references)."""

    sources: list[str]
    targets: list[str]
    source: str  # where they came from, for messages

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.targets):
            raise ValueError(f"{self.source}: {len(self.sources)} sources but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.sources)

    def grouped(self) -> tuple[list[str], list[list[str]]]:
        """Distinct sources in first-appearance order, each with all its references."""
        from ..evaluation.nlg import group_references

        return group_references(self.sources, self.targets)

    def first_items(self, max_items: int | None) -> TextPairs:
        """The rows of the first ``max_items`` distinct sources (a fixed subset for decoding)."""
        if max_items is None:
            return self
        keep = set(self.grouped()[0][:max_items])
        rows = [(s, t) for s, t in zip(self.sources, self.targets) if s in keep]
        return replace(self, sources=[s for s, _ in rows], targets=[t for _, t in rows])

    def subsample(self, max_rows: int | None, seed: int = 0) -> TextPairs:
        """At most ``max_rows`` rows, drawn at random (seeded), kept in file order."""
        keep = seeded_subset(len(self), max_rows, seed)
        if keep is None:
            return self
        return replace(self, sources=[self.sources[i] for i in keep], targets=[self.targets[i] for i in keep])


def _e2e_dir(data_dir: str | Path) -> Path:
    """Accept the folder holding ``e2e/`` or the ``e2e`` folder itself."""
    data_dir = Path(data_dir)
    return data_dir / "e2e" if (data_dir / "e2e").is_dir() else data_dir


def load_e2e(data_dir: str | Path, split: str) -> TextPairs:
    """One split of the E2E NLG Challenge data: ``train``, ``validation`` (devset) or ``test``."""
    key = {"dev": "validation", "eval": "validation"}.get(split, split)
    if key not in E2E_FILES:
        raise ValueError(f"E2E has no split {split!r}; splits: {', '.join(E2E_FILES)}")
    path = _e2e_dir(data_dir) / E2E_FILES[key]
    return load_pairs(path, "mr", "ref")


def load_pairs(path: str | Path, source_column: str, target_column: str) -> TextPairs:
    """Sources and targets from a CSV, TSV or JSON Lines file; errors name the file and line."""
    path = Path(path)
    require_file(path)
    fmt = table_format(path)
    columns = [source_column, target_column]
    if fmt == "jsonl":
        records = jsonl_records(path, columns)
    else:
        records = delimited_records(path, columns, delimiter="," if fmt == "csv" else "\t", quoted=fmt == "csv")
    sources, targets = [], []
    for lineno, (src, tgt) in records:
        for value, column in ((src, source_column), (tgt, target_column)):
            if not isinstance(value, str):
                raise DataError(f"{path}, line {lineno}: column {column!r} holds {type(value).__name__}, "
                                "expected a string")
        if not src.strip():
            raise DataError(f"{path}, line {lineno}: empty source in column {source_column!r}")
        if not tgt.strip():
            raise DataError(f"{path}, line {lineno}: empty target in column {target_column!r}")
        sources.append(src.strip())
        targets.append(tgt.strip())
    return TextPairs(sources, targets, str(path))


def prompt_ids(tokenizer, source: str, max_source_tokens: int) -> tuple[list[int], bool]:
    """Token ids of ``source + PROMPT_END``, the source cut to ``max_source_tokens``; (ids, truncated)."""
    ids = tokenizer(source, add_special_tokens=False)["input_ids"]
    end = tokenizer(PROMPT_END, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None else []
    truncated = len(ids) > max_source_tokens
    return bos + ids[:max_source_tokens] + end, truncated


def check_causal_length(tokenizer, max_length: int) -> None:
    """Refuse a ``max_length`` that cannot hold the prompt's fixed tokens, one source token, one target token
    and the end token: below it every example would exceed the length the run records."""
    fixed = len(prompt_ids(tokenizer, "", 0)[0])  # a leading bos, if any, and PROMPT_END
    needed = fixed + 3
    if max_length < needed:
        raise ValueError(f"--max-length {max_length} cannot hold a generation example: the prompt's own {fixed} "
                         f"tokens, a source token, a target token and the end token; give --max-length {needed} "
                         "or more")


@dataclass
class EncodedPairs:
    examples: list[dict[str, Any]]
    truncated: int  # sources cut to fit


def encode_causal(pairs: TextPairs, tokenizer, max_length: int, max_source_tokens: int | None = None) -> EncodedPairs:
    """One example per row: ``input_ids`` = prompt + target + eos, ``labels`` = -100 on the prompt.

    The target is cut so that the whole fits ``max_length``; the source to ``max_source_tokens``
    (default: half of ``max_length``), with a warning giving the count.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-sequence token: generation needs one")
    check_causal_length(tokenizer, max_length)
    budget = max_source_tokens or max_length // 2
    examples, truncated = [], 0
    for src, tgt in zip(pairs.sources, pairs.targets):
        prompt, cut = prompt_ids(tokenizer, src, budget)
        truncated += cut
        target = tokenizer(" " + tgt, add_special_tokens=False)["input_ids"][: max(1, max_length - len(prompt) - 1)]
        target = target + [tokenizer.eos_token_id]
        ids = prompt + target
        examples.append({"input_ids": ids, "labels": [-100] * len(prompt) + target})
    if truncated:
        warnings.warn(f"{pairs.source}: {truncated} of {len(pairs)} sources were longer than {budget} tokens "
                      "and were truncated", stacklevel=2)
    return EncodedPairs(examples, truncated)


@dataclass
class CausalCollator:
    """Right-padded batches: ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""

    pad_token_id: int

    def __call__(self, features):
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            mask[i, :n] = 1
            labels[i, :n] = torch.tensor(f["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
