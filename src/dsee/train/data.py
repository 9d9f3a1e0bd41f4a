"""Reading text-classification / regression data, tokenising it and batching it.

Two sources:

* :func:`load_glue` -- a GLUE task, from a folder in the original GLUE layout (see
  :mod:`dsee.train.tasks`) or, without a folder, from the ``nyu-mll/glue`` Hub dataset
  (needs the optional ``datasets`` package and network access).
* :func:`load_table` -- a user file in CSV, TSV or JSON Lines (optionally gzipped).

Both return a :class:`TextDataset`: parallel lists of texts and labels, plus the label list.
:func:`encode` tokenises one, and :class:`Collator` pads encoded examples into batches.

Reading rules, chosen so that bad input fails loudly instead of silently training on garbage:

* Files are UTF-8 (a leading byte-order mark is ignored, as in the GLUE MRPC files); undecodable
  bytes are an error naming the line.
* TSV files are read as plain tab-separated lines **without quote processing**, exactly like the
  GLUE/BERT processors: GLUE texts contain bare ``"`` characters that CSV quoting would swallow
  (silently merging rows). A TSV field therefore cannot contain a tab or a newline; use CSV or
  JSON Lines for such texts. CSV files use standard CSV quoting.
* CSV and TSV files have a header line. Every line must have as many fields as the header.
  Empty lines are skipped.
* Lines end in LF or CRLF; a file whose lines end in a bare CR (old Mac files) is refused with a
  message saying how to convert it. A data file must be a regular file (not a FIFO or a device).
* Integer labels are classes named by their value: ``1``, ``01`` and ``+1`` are one class, ``"1"``.
* Regression targets must be finite and below ``REGRESSION_LIMIT`` in size (the squared errors of
  larger ones overflow float32).
* Every problem raises :class:`DataError` naming the file, the line and what is wrong.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import random
import re
import stat
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .tasks import GlueTask, get_task, resolve_split

if TYPE_CHECKING:  # imported lazily at run time: reading data must not need torch/transformers
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "Collator",
    "seeded_subset",
    "DataError",
    "TextDataset",
    "encode",
    "load_glue",
    "load_table",
]

TaskType = Literal["classification", "regression"]
ColumnSpec = str | int
PathLike = str | Path

_BOM = b"\xef\xbb\xbf"
_INT_RE = re.compile(r"[+-]?\d+")
_MAX_LISTED = 40  # how many directory entries / columns an error message lists
# |regression target| above this: squared errors summed over a batch overflow float32 (max 3.4e38)
REGRESSION_LIMIT = 1e15


class DataError(ValueError):
    """A data file is missing or malformed. The message names the file and, if known, the line."""


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


@dataclass
class TextDataset:
    """Texts and labels of one split, kept as plain Python lists.

    Attributes:
        texts: one tuple per example: ``(text,)`` or ``(text_a, text_b)`` for sentence pairs.
        labels: class indices (``int``) for classification, targets (``float``) for regression.
        source: where the data came from (a file path or a Hub id), for messages.
        task_type: ``"classification"`` or ``"regression"``.
        label_list: for classification, the class names: ``labels[i] == k`` means class
            ``label_list[k]``. Save it with a run so that predictions can be mapped back and a
            validation file can be read with the same indices. ``None`` for regression.
    """

    texts: list[tuple[str, ...]]
    labels: list[int] | list[float]
    source: str
    task_type: TaskType = "classification"
    label_list: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"{self.source}: {len(self.texts)} texts but {len(self.labels)} labels"
            )
        if self.task_type not in ("classification", "regression"):
            raise ValueError(
                f"task_type must be 'classification' or 'regression', not {self.task_type!r}"
            )
        if (self.label_list is None) != (self.task_type == "regression"):
            raise ValueError(f"{self.source}: label_list is required for classification only")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        """Number of model outputs: the number of classes, or 1 for regression."""
        return 1 if self.label_list is None else len(self.label_list)

    @property
    def is_pair(self) -> bool:
        """True when examples are sentence pairs."""
        return bool(self.texts) and len(self.texts[0]) == 2

    def subsample(self, max_samples: int | None, seed: int = 0) -> TextDataset:
        """Return at most ``max_samples`` examples, drawn uniformly at random without replacement.

        Deterministic: the same ``seed`` gives the same rows. The kept rows stay in file order,
        and the draw is a prefix of one seeded permutation, so a smaller sample is a subset of a
        larger one with the same seed. ``None`` (or a size >= ``len(self)``) keeps everything.
        The label list is unchanged, so indices agree with the full data.
        """
        keep = seeded_subset(len(self), max_samples, seed)
        if keep is None:
            return self
        return replace(
            self,
            texts=[self.texts[i] for i in keep],
            labels=[self.labels[i] for i in keep],
        )


def seeded_subset(n: int, max_samples: int | None, seed: int) -> list[int] | None:
    """Indices of at most ``max_samples`` of ``n`` rows, drawn without replacement, in file order.

    A prefix of one seeded permutation, so a smaller sample is a subset of a larger one with the
    same seed. None when everything is kept (``max_samples`` None or >= n).
    """
    if max_samples is None or max_samples >= n:
        return None
    if max_samples < 1:
        raise ValueError(f"max_samples must be a positive integer or None, not {max_samples}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[:max_samples])


# --------------------------------------------------------------------------------------------
# Low-level reading: files, lines, fields
# --------------------------------------------------------------------------------------------


def _describe_dir(directory: Path) -> str:
    """A short description of a directory's contents for "file not found" messages."""
    if not directory.is_dir():
        return f"the directory {directory} does not exist"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    if not names:
        return f"{directory} is empty"
    shown = ", ".join(names[:_MAX_LISTED])
    more = f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return f"{directory} contains: {shown}{more}"


def _kind_of(path: Path) -> str:
    mode = path.stat().st_mode
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def require_file(path: Path) -> None:
    """A clear error unless ``path`` is a regular file (a link to one is fine): missing, or a FIFO, a device,
    a directory (which would block, never end, or fail in the middle of reading)."""
    if path.is_file():
        return
    if path.exists():
        raise DataError(f"{path} is not a regular file ({_kind_of(path)}): give a data file (CSV, TSV or "
                        "JSON Lines) saved on disk")
    raise DataError(f"file not found: {path}; {_describe_dir(path.parent)}")


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` for each line, decoded as UTF-8, end-of-line removed.

    Lines are decoded one by one (rather than through a text stream) so that a decoding error
    can name its line, and so that big files are streamed. ``.gz`` files are decompressed.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if lineno == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM) :]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    bad = raw[err.start : err.end]
                    raise DataError(
                        f"{path}, line {lineno}: bytes {bad!r} at byte {err.start + 1} of the line "
                        "are not valid UTF-8; save the file as UTF-8"
                    ) from None
                line = line.rstrip("\r\n")
                if lineno == 1 and "\r" in line:
                    raise DataError(
                        f"{path}: its lines end in a bare carriage return (CR, old Mac line endings), "
                        "which are not read; convert them to LF, e.g. tr '\\r' '\\n' < FILE > NEW_FILE"
                    )
                yield lineno, line
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot decompress this .gz file ({err})") from None


def _raise_csv_field_limit() -> None:
    """Python's csv refuses fields over 131,072 characters; a text of any length is the tokenizer's
    business (it truncates to --max-length), so lift the limit as far as the platform allows."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # a C long is 32 bits on some platforms
            limit //= 2


def _split_lines(path: Path, delimiter: str, quoted: bool) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, fields)`` per non-empty record of a delimited file.

    ``quoted=False`` splits each line on the delimiter (GLUE TSV); ``quoted=True`` uses the
    ``csv`` module, where a quoted field may span lines (the number is the record's first line).
    """
    _raise_csv_field_limit()
    lines = _iter_lines(path)
    if not quoted:
        for lineno, line in lines:
            if line:
                yield lineno, line.split(delimiter)
        return
    # csv.reader counts the items it consumes in line_num; we feed it exactly one physical
    # line per item so that its count is the file's line number.
    reader = csv.reader((line + "\n" for _, line in lines), delimiter=delimiter, strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"{path}, line {reader.line_num}: malformed CSV: {err}") from None
        if row:
            yield start, row
        start = reader.line_num + 1


def _column_index(spec: ColumnSpec, header: Sequence[str], path: Path, lineno: int) -> int:
    """Resolve a column name or 0-based position against a header line."""
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise TypeError(f"a column is a header name or a 0-based position, not {spec!r}")
    if isinstance(spec, int):
        if 0 <= spec < len(header):
            return spec
        raise DataError(
            f"{path}, line {lineno}: column position {spec} is out of range; "
            f"the lines have {len(header)} fields"
        )
    matches = [i for i, name in enumerate(header) if name == spec]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise DataError(
            f"{path}, line {lineno}: the header has column {spec!r} {len(matches)} times"
        )
    names = ", ".join(repr(h) for h in header[:_MAX_LISTED])
    raise DataError(f"{path}, line {lineno}: column {spec!r} not found; the header has: {names}")


def delimited_records(
    path: Path,
    columns: Sequence[ColumnSpec],
    *,
    delimiter: str,
    quoted: bool,
    has_header: bool = True,
    num_fields: int | None = None,
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, [value of each requested column])`` from a CSV/TSV file.

    Every line must have as many fields as the header (or ``num_fields`` without a header): a
    different count means a stray tab/quote or a truncated line, which would otherwise shift
    columns silently.
    """
    kind = {"\t": "tab", ",": "comma"}.get(delimiter, repr(delimiter))
    rows = _split_lines(path, delimiter, quoted)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: the file is empty")
    if has_header:
        header_line, header = first
        header = [name.strip() for name in header]
        expected = len(header)
        why = f"as the header (line {header_line}) has"
        pending: list[tuple[int, list[str]]] = []
    else:
        header_line = 0
        expected = num_fields if num_fields is not None else len(first[1])
        header = [str(i) for i in range(expected)]
        why = "in this header-less format"
        pending = [first]
    indices = [_column_index(c, header, path, header_line or first[0]) for c in columns]
    count = 0
    for lineno, fields in chain(pending, rows):
        if len(fields) != expected:
            raise DataError(
                f"{path}, line {lineno}: found {len(fields)} {kind}-separated fields, "
                f"expected {expected} {why}"
            )
        yield lineno, [fields[i] for i in indices]
        count += 1
    if count == 0:
        raise DataError(f"{path}: no data lines after the header (line {header_line})")


def jsonl_records(path: Path, columns: Sequence[ColumnSpec]) -> Iterator[tuple[int, list[Any]]]:
    """Yield ``(line number, [value of each requested key])`` from a JSON Lines file."""
    for spec in columns:
        if not isinstance(spec, str):
            raise TypeError(f"{path}: JSON Lines columns are key names, not {spec!r}")
    count = 0
    for lineno, line in _iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}, line {lineno}: invalid JSON ({err.msg}, column {err.colno}); "
                "expected JSON Lines: one object per line"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{path}, line {lineno}: expected a JSON object, found {type(obj).__name__}; "
                "expected JSON Lines: one object per line"
            )
        missing = [c for c in columns if c not in obj]
        if missing:
            keys = ", ".join(repr(k) for k in list(obj)[:_MAX_LISTED])
            raise DataError(
                f"{path}, line {lineno}: key {missing[0]!r} missing; the object has: {keys}"
            )
        yield lineno, [obj[c] for c in columns]
        count += 1
    if count == 0:
        raise DataError(f"{path}: the file is empty")


# --------------------------------------------------------------------------------------------
# GLUE
# --------------------------------------------------------------------------------------------


def load_glue(
    task: str | GlueTask,
    data_dir: PathLike | None,
    split: str,
    max_samples: int | None = None,
    seed: int = 0,
) -> TextDataset:
    """Load one split of a GLUE task.

    Args:
        task: task name (``"rte"``, ``"sst2"``, ...; see :data:`dsee.train.tasks.GLUE_TASKS`).
        data_dir: the folder holding the GLUE task folders (``<data_dir>/RTE/dev.tsv``); the
            task folder itself (``.../RTE``) is accepted too. Each file may be ``.tsv`` or
            ``.tsv.gz``. ``None`` loads ``nyu-mll/glue`` from the Hugging Face Hub instead
            (needs the ``datasets`` package and network access).
        split: ``"train"``, ``"validation"`` (or ``"dev"``); for MNLI ``"validation_matched"`` /
            ``"validation_mismatched"``.
        max_samples: keep at most this many examples, a seeded uniform sample
            (see :meth:`TextDataset.subsample`); ``None`` keeps all.
        seed: seed of that sample.

    Returns:
        A :class:`TextDataset` whose labels use the canonical GLUE / Hugging Face class order
        and whose ``label_list`` holds the class names.

    Raises:
        DataError: missing file, missing column, ragged line, unknown label, bad bytes...
        ValueError: unknown task or split.
        ImportError: ``data_dir`` is ``None`` and ``datasets`` is not installed.
    """
    spec = task if isinstance(task, GlueTask) else get_task(task)
    split = resolve_split(spec, split)
    if data_dir is None:
        dataset = _load_glue_hub(spec, split)
    else:
        dataset = _read_glue_file(spec, _find_glue_file(spec, Path(data_dir), split))
    return dataset.subsample(max_samples, seed)


def _find_glue_file(spec: GlueTask, data_dir: Path, split: str) -> Path:
    stem = spec.files[split]
    folders = [data_dir / spec.folder]
    # Also accept the task folder itself, but only under its own name, so that pointing a task
    # at another task's folder cannot silently read the wrong files.
    if data_dir.name.lower() == spec.folder.lower():
        folders.insert(0, data_dir)
    for folder in folders:
        for name in (f"{stem}.tsv", f"{stem}.tsv.gz"):
            if (folder / name).exists():
                require_file(folder / name)
                return folder / name
    folder = folders[-1]
    where = _describe_dir(folder) if folder.is_dir() else _describe_dir(data_dir)
    raise DataError(
        f"GLUE {spec.name} {split}: file not found: {folder / stem}.tsv (or .tsv.gz); {where}"
    )


def _read_glue_file(spec: GlueTask, path: Path) -> TextDataset:
    records = delimited_records(
        path,
        [*spec.text_columns, spec.label_column],
        delimiter="\t",
        quoted=False,
        has_header=spec.has_header,
        num_fields=spec.num_fields,
    )
    index = None if spec.label_values is None else {v: i for i, v in enumerate(spec.label_values)}
    texts: list[tuple[str, ...]] = []
    labels: list[Any] = []
    for lineno, values in records:
        raw = values[-1].strip()
        if index is None:
            labels.append(_parse_float(raw, path, lineno))
        elif raw in index:
            labels.append(index[raw])
        else:
            known = ", ".join(repr(v) for v in index)
            raise DataError(
                f"{path}, line {lineno}: unknown label {raw!r} for GLUE {spec.name}; "
                f"expected one of {known}"
            )
        texts.append(tuple(values[:-1]))
    return TextDataset(
        texts,
        labels,
        str(path),
        spec.task_type,
        None if spec.label_names is None else list(spec.label_names),
    )


def _load_glue_hub(spec: GlueTask, split: str) -> TextDataset:
    """Load ``nyu-mll/glue`` through the optional ``datasets`` package."""
    try:
        import datasets  # optional dependency, imported only on this path
    except ImportError as err:
        raise ImportError(
            f"loading GLUE {spec.name} without data_dir uses the Hugging Face Hub and needs the "
            "`datasets` package (pip install datasets); or pass data_dir, a folder in the "
            f"GLUE layout (<data_dir>/{spec.folder}/{spec.files[split]}.tsv)"
        ) from err
    source = f"nyu-mll/glue ({spec.name}, {split})"
    try:
        hub = datasets.load_dataset("nyu-mll/glue", spec.name, split=split)
    except Exception as err:  # network, cache and Hub errors have many types
        raise DataError(
            f"could not load {source} from the Hugging Face Hub: {err}. Offline? Pass data_dir, "
            f"a folder in the GLUE layout (<data_dir>/{spec.folder}/{spec.files[split]}.tsv)"
        ) from err
    columns = [list(hub[c]) for c in spec.hub_text_columns]
    texts = [tuple(str(t) for t in row) for row in zip(*columns, strict=True)]
    raw_labels = list(hub["label"])
    if spec.label_values is None:
        labels: list[Any] = [float(x) for x in raw_labels]
    else:
        labels = [int(x) for x in raw_labels]
        bad = [x for x in labels if not 0 <= x < spec.num_labels]
        if bad:  # GLUE test splits carry label -1
            raise DataError(f"{source}: label {bad[0]} out of range; this split has no gold labels")
    return TextDataset(
        texts,
        labels,
        source,
        spec.task_type,
        None if spec.label_names is None else list(spec.label_names),
    )


# --------------------------------------------------------------------------------------------
# User files
# --------------------------------------------------------------------------------------------


def load_table(
    path: PathLike,
    text_columns: ColumnSpec | Sequence[ColumnSpec],
    label_column: ColumnSpec,
    task_type: TaskType | None = None,
    label_list: Sequence[str | int | bool] | None = None,
    *,
    max_samples: int | None = None,
    seed: int = 0,
) -> TextDataset:
    """Load a user file of texts and labels.

    The format comes from the extension (a trailing ``.gz`` is decompressed): ``.csv`` (standard
    CSV quoting), ``.tsv`` / ``.tab`` (plain tab-split lines, no quoting, like GLUE),
    ``.jsonl`` / ``.ndjson`` / ``.json`` (JSON Lines: one object per line). CSV and TSV files
    need a header line; columns are header names (or 0-based positions), JSON Lines columns are
    keys.

    The task type, unless given, is detected from the labels of this file: all labels integers
    (``1``, ``"-2"``) -> classification; all labels numbers and some not integers (``"3.8"``,
    JSON ``4.0``) -> regression; anything else (strings) -> classification.

    For classification the label list is ``label_list`` if given, else the sorted distinct
    labels of this file (numerically when they are all integers). Labels are compared as text
    (JSON ``true`` is ``"true"``, surrounding spaces are ignored). To read a validation file
    with the training file's indices, pass ``label_list=train.label_list``: a label outside it
    is an error naming the file, line and label.

    Args:
        path: the file.
        text_columns: one column, or two for sentence-pair tasks.
        label_column: the label column.
        task_type: ``"classification"``, ``"regression"`` or ``None`` to detect it.
        label_list: the classes, in index order (implies classification).
        max_samples: keep at most this many examples, a seeded uniform sample taken after the
            label list is fixed (see :meth:`TextDataset.subsample`); ``None`` keeps all.
        seed: seed of that sample.

    Raises:
        DataError: missing file, unknown format, missing column, ragged line, empty file, bad
            bytes, missing or unknown label, non-numeric regression target.
    """
    path = Path(path)
    if task_type not in (None, "classification", "regression"):
        raise ValueError(
            f"task_type must be 'classification', 'regression' or None, not {task_type!r}"
        )
    columns = [text_columns] if isinstance(text_columns, (str, int)) else list(text_columns)
    if len(columns) not in (1, 2):
        raise ValueError(f"give one or two text columns, not {len(columns)}: {columns!r}")
    require_file(path)
    fmt = table_format(path)
    wanted = [*columns, label_column]
    if fmt == "jsonl":
        records: Iterator[tuple[int, list[Any]]] = jsonl_records(path, wanted)
    else:
        records = delimited_records(
            path, wanted, delimiter="," if fmt == "csv" else "\t", quoted=fmt == "csv"
        )
    texts: list[tuple[str, ...]] = []
    raw_labels: list[str] = []
    linenos: list[int] = []
    for lineno, values in records:
        texts.append(
            tuple(_as_text(v, c, path, lineno) for v, c in zip(values[:-1], columns, strict=True))
        )
        label = _label_text(values[-1])
        if not label:
            raise DataError(f"{path}, line {lineno}: missing label in column {label_column!r}")
        raw_labels.append(label)
        linenos.append(lineno)
    kind, labels, names = _resolve_labels(raw_labels, linenos, path, task_type, label_list)
    return TextDataset(texts, labels, str(path), kind, names).subsample(max_samples, seed)


def table_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    formats = {
        ".csv": "csv",
        ".tsv": "tsv",
        ".tab": "tsv",
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".json": "jsonl",
    }
    if suffix not in formats:
        raise DataError(
            f"{path}: unknown file type {suffix or '(no extension)'!r}; "
            "use .csv, .tsv or .jsonl (optionally .gz)"
        )
    return formats[suffix]


def _as_text(value: Any, column: ColumnSpec, path: Path, lineno: int) -> str:
    if isinstance(value, str):
        return value
    raise DataError(
        f"{path}, line {lineno}: text column {column!r} holds {type(value).__name__} "
        f"{value!r}, expected a string"
    )


def _label_text(value: Any) -> str:
    """A label's canonical text: CSV strings stripped, JSON scalars written as JSON would."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # 1 -> "1", 1.0 -> "1.0": a JSON float marks regression
    return ""  # null, lists, objects: reported as a missing label


def _parse_float(text: str, path: Path, lineno: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(
            f"{path}, line {lineno}: regression label {text!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"{path}, line {lineno}: regression label {text!r} is not finite")
    if abs(value) > REGRESSION_LIMIT:
        raise DataError(
            f"{path}, line {lineno}: regression label {text!r} is too large: beyond ±{REGRESSION_LIMIT:g} the "
            "squared errors overflow float32; rescale the targets (e.g. divide them by a constant)"
        )
    return value


def _integer_name(text: str) -> str:
    """The name of an integer label: its value, written plainly ("01", "+1" -> "1")."""
    return str(int(text))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _resolve_labels(
    raw: list[str],
    linenos: list[int],
    path: Path,
    task_type: TaskType | None,
    label_list: Sequence[str | int | bool] | None,
) -> tuple[TaskType, list[Any], list[str] | None]:
    """Decide the task type and turn label texts into class indices or floats."""
    if label_list is not None:
        if task_type == "regression":
            raise ValueError("label_list is only meaningful for classification")
        names = [_label_text(x) for x in label_list]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(
                f"label_list must hold distinct, non-empty labels: {list(label_list)!r}"
            )
        task_type = "classification"
    elif task_type is None:
        odd = [(n, x) for x, n in zip(raw, linenos, strict=True) if not _is_number(x)]
        if odd and len(odd) <= 0.1 * len(raw):  # numbers but for a few: probably broken lines, not classes
            shown = ", ".join(f"line {n}: {x!r}" for n, x in odd[:8]) + (" ..." if len(odd) > 8 else "")
            raise DataError(
                f"{path}: the labels are numbers except on {len(odd)} line(s) ({shown}); fix those lines, or "
                "say --task-type classification if the labels are really class names"
            )
        if all(_INT_RE.fullmatch(x) for x in raw):
            task_type = "classification"
        elif not odd:
            task_type = "regression"
        else:
            task_type = "classification"

    if task_type == "regression":
        return (
            "regression",
            [_parse_float(x, path, n) for x, n in zip(raw, linenos, strict=True)],
            None,
        )

    # integer labels name their class by value: "01" and "+1" are class "1", not classes of their own
    integers = all(_INT_RE.fullmatch(x) for x in (names if label_list is not None else raw))
    if integers:
        raw = [_integer_name(x) if _INT_RE.fullmatch(x) else x for x in raw]
        if label_list is not None:
            names = [_integer_name(x) for x in names]
            if len(set(names)) != len(names):
                raise ValueError(f"label_list names one integer twice: {list(label_list)!r}")
    if label_list is None:
        distinct = set(raw)
        if integers:
            names = sorted(distinct, key=int)  # "2" before "10"
        else:
            names = sorted(distinct)
    index = {name: i for i, name in enumerate(names)}
    labels = []
    for label, lineno in zip(raw, linenos, strict=True):
        if label not in index:
            known = ", ".join(repr(n) for n in names[:_MAX_LISTED])
            raise DataError(
                f"{path}, line {lineno}: unknown label {label!r}; the known labels "
                f"(e.g. from the training file) are: {known}"
            )
        labels.append(index[label])
    return "classification", labels, names


# --------------------------------------------------------------------------------------------
# Tokenisation and batching
# --------------------------------------------------------------------------------------------


def encode(
    dataset: TextDataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    batch_size: int = 1000,
) -> list[dict[str, Any]]:
    """Tokenise a dataset into one dict per example, without padding.

    Each dict holds what the tokenizer returns (``input_ids``, ``attention_mask``, and for BERT
    ``token_type_ids``) as lists, plus ``labels``. Sentence pairs use the tokenizer's pair
    encoding. Sequences longer than ``max_length`` tokens are truncated (for pairs the longer
    text is shortened first). The list is a valid map-style dataset for
    ``torch.utils.data.DataLoader``; pad it with :class:`Collator`.

    ``batch_size`` only sets how many texts go to the (fast) tokenizer per call.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be positive, not {max_length}")
    arity = {len(t) for t in dataset.texts}
    if len(arity) > 1 or not arity <= {1, 2}:
        raise ValueError(
            f"{dataset.source}: every example needs 1 or 2 texts, found {sorted(arity)}"
        )
    check_max_length(tokenizer, max_length, pair=arity == {2})
    examples: list[dict[str, Any]] = []
    for start in range(0, len(dataset), batch_size):
        chunk = dataset.texts[start : start + batch_size]
        first = [t[0] for t in chunk]
        second = [t[1] for t in chunk] if len(chunk[0]) == 2 else None
        enc = tokenizer(first, second, truncation=True, max_length=max_length)
        keys = list(enc.keys())
        for i in range(len(chunk)):
            item = {key: enc[key][i] for key in keys}
            item["labels"] = dataset.labels[start + i]
            examples.append(item)
    return examples


def check_max_length(tokenizer: PreTrainedTokenizerBase, max_length: int, pair: bool) -> None:
    """Refuse a ``max_length`` the tokenizer cannot truncate to.

    The tokenizer adds its special tokens (BERT: [CLS] text [SEP], 2; a pair, 3) to every example and
    truncates only the texts, keeping at least one token of each: below that it cannot honour the length
    and returns the examples whole (with a logged error), so the run would train on full-length examples
    while recording the short length.
    """
    special = tokenizer.num_special_tokens_to_add(pair=pair)
    needed = special + (2 if pair else 1)
    if max_length < needed:
        what = "pair of texts" if pair else "text"
        raise ValueError(
            f"--max-length {max_length} is below what the tokenizer can truncate to: it adds {special} special "
            f"tokens to each {what} and keeps at least one token of each text; give --max-length {needed} or more"
        )


@dataclass
class Collator:
    """Batch encoded examples: dynamic padding plus a ``labels`` tensor.

    Padding is done by ``transformers.DataCollatorWithPadding`` (to the longest sequence of the
    batch, optionally rounded up to ``pad_to_multiple_of``). ``labels`` is built here with an
    explicit dtype -- ``torch.long`` for classification, ``torch.float32`` for regression -- so
    that a regression file whose targets happen to be whole numbers still gets float labels.

    A class rather than a closure so that ``DataLoader`` worker processes can pickle it.
    """

    tokenizer: PreTrainedTokenizerBase
    task_type: TaskType = "classification"
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        from transformers import DataCollatorWithPadding

        if self.task_type not in ("classification", "regression"):
            raise ValueError(
                f"task_type must be 'classification' or 'regression', not {self.task_type!r}"
            )
        if self.tokenizer.pad_token is None:
            raise ValueError(
                "the tokenizer has no padding token; set one first, e.g. "
                "tokenizer.pad_token = tokenizer.eos_token (GPT-2)"
            )
        self._pad = DataCollatorWithPadding(
            self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
        )

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        inputs = [{k: v for k, v in f.items() if k not in ("labels", "label")} for f in features]
        batch = dict(self._pad(inputs))
        if features and "labels" in features[0]:
            dtype = torch.float32 if self.task_type == "regression" else torch.long
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        return batch
