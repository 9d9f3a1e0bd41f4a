"""benchmarks/_record.py: one appended line per record, and a contention warning judged on the timed stretch."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _record  # noqa: E402


@pytest.fixture
def process_share(monkeypatch):
    """Pin the whole-process cpu share to 0.41 (a process that loaded models on one thread first)."""
    monkeypatch.setattr(_record, "cpu_share", lambda: {"process_cpu_s": 4.1, "process_wall_s": 10.0, "cpu_share": 0.41})


def test_record_appends_one_line_and_keeps_earlier_ones(tmp_path, process_share, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text('{"benchmark": "older"}\n')
    entry = _record.record("probe", {"x": 1.5}, path=path)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == {"benchmark": "older"}
    assert json.loads(lines[1]) == json.loads(json.dumps(entry))
    assert entry["results"] == {"x": 1.5} and "timed_cpu_share" not in entry["contention"]


def test_without_a_timed_stretch_the_process_share_is_judged(tmp_path, process_share, capsys):
    _record.record("probe", {}, path=tmp_path / "r.jsonl")
    out = capsys.readouterr().out
    assert "WARNING: over the process" in out and "41%" in out


def test_a_quiet_timed_stretch_is_not_flagged_by_a_busy_process(tmp_path, process_share, capsys):
    entry = _record.record("probe", {}, path=tmp_path / "r.jsonl", timed_share=0.989)
    out = capsys.readouterr().out
    assert "WARNING" not in out and "cpu share 0.989 over the timed stretch" in out
    assert entry["contention"] == {"process_cpu_s": 4.1, "process_wall_s": 10.0, "cpu_share": 0.41,
                                   "timed_cpu_share": 0.989}


def test_a_contended_timed_stretch_is_flagged(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_record, "cpu_share", lambda: {"process_cpu_s": 9.9, "process_wall_s": 10.0, "cpu_share": 0.99})
    _record.record("probe", {}, path=tmp_path / "r.jsonl", timed_share=0.5)
    assert "WARNING: over the timed stretch this process got only 50%" in capsys.readouterr().out
