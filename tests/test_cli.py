"""The dsee command on a tiny saved model (no downloads)."""

from __future__ import annotations

import subprocess
import sys

from conftest import tiny_classifier
from dsee import DSEEConfig, load_adapter
from dsee.cli import main


def test_adapt_prints_report_and_saves(tmp_path, capsys):
    tiny_classifier("bert", num_labels=2).save_pretrained(tmp_path / "model")
    code = main(["adapt", "--model", str(tmp_path / "model"), "--rank", "4", "--num-sparse", "8",
                 "--out", str(tmp_path / "adapter")])
    assert code == 0
    out = capsys.readouterr().out
    assert "bert.encoder.layer.1.attention.self.value" in out
    # 4 matrices × (4·(48+48) + 8) + classifier 48·2 + 2
    assert "trainable        : 1,666 of" in out
    model = load_adapter(tiny_classifier("bert", num_labels=2), tmp_path / "adapter")
    assert model.dsee_state.config == DSEEConfig(rank=4, num_sparse=8)


def test_bad_input_is_a_clear_error_with_exit_code_2(tmp_path, capsys):
    tiny_classifier("bert", num_labels=2).save_pretrained(tmp_path / "model")
    code = main(["adapt", "--model", str(tmp_path / "model"), "--rank", "99"])
    assert code == 2
    assert "dsee adapt: error: rank=99 exceeds" in capsys.readouterr().err


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "dsee", "--help"], capture_output=True, text=True, check=True)
    assert "adapt" in out.stdout
