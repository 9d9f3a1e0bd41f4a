"""Every number the READMEs cite is generated from the records: the committed text is what they give."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import shared_data_dir

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
spec = importlib.util.spec_from_file_location("tables", BENCH / "tables.py")
tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tables)


def test_the_committed_blocks_are_what_the_records_give():
    assert tables.main(["--check", "--no-reports"]) == 0


def test_a_number_edited_by_hand_is_caught():
    args = tables.parse_args(["--no-reports"])
    text = (BENCH.parent / "README.md").read_text()
    match = next(m for m in tables.BLOCK.finditer(text) if m["name"] == "measured")
    body = match["body"]
    edited = text.replace(body, body.replace("| ", "| 9", 1), 1)
    assert edited != text
    assert tables.render(edited, args, {}) == text  # the records put the true text back: --check fails on it


def test_every_block_in_the_documents_is_known_and_an_unknown_one_is_refused():
    names = {m["name"] for doc in tables.DOCUMENTS for m in tables.BLOCK.finditer(doc.read_text())}
    assert names and names <= set(tables.BLOCKS)
    with pytest.raises(SystemExit, match="unknown generated block"):
        tables.render("<!-- generated:nope -->\n<!-- /generated:nope -->", tables.parse_args([]), {})


def test_the_experiment_reports_are_what_the_records_give():
    data = shared_data_dir()
    if data is None:
        pytest.skip("the E2E references for the BLEU tests are read from ../shared/data (absent)")
    assert tables.stale_reports(tables.parse_args(["--data-dir", str(data)])) == []
