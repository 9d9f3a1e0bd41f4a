"""The dsee command on a tiny saved model (no downloads)."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


def test_generate_reads_standard_input_with_a_dash(tmp_path, monkeypatch, capsys):
    """`printf ... | dsee generate RUN --input -`: one output per non-empty input line, in order."""
    import io

    import dsee.train.generate as generate

    seen = []

    def echo(run, sources, decoding):  # the decoder itself is tested in test_generation.py
        seen.append(sources)
        return [s.upper() for s in sources]

    monkeypatch.setattr(generate, "generate_run_texts", echo)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("name[Aromi]\n\nfood[Chinese]\n".encode())))
    assert main(["generate", str(tmp_path / "run"), "--input", "-"]) == 0
    assert seen == [["name[Aromi]", "food[Chinese]"]]
    assert capsys.readouterr().out == "NAME[AROMI]\nFOOD[CHINESE]\n"


def _onnx_matmul(directory, *, external: str | None = None, size: int = 2):
    """A one-node ONNX graph (Y = X·W) in ``directory``/model.onnx; W stored at ``external`` (a path relative to
    the folder, as ONNX external data is) when given."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    weight = numpy_helper.from_array(np.ones((size, size), dtype=np.float32), "W")
    if external is not None:
        (directory / external).parent.mkdir(parents=True, exist_ok=True)
        (directory / external).write_bytes(weight.raw_data)
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", str(4 * size * size))):
            weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, size])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, size])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (directory / "model.onnx").write_bytes(model.SerializeToString())
    return directory / "model.onnx"


def test_bench_names_an_onnx_file_whose_weights_lie_outside_its_folder(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from dsee.deploy.runtime import OnnxRuntimeModel

    OnnxRuntimeModel(_onnx_matmul(tmp_path / "fine", external="weights.bin"))  # the same graph, weights inside: loads
    _onnx_matmul(tmp_path / "export", external="../outside/weights.bin")
    assert main(["bench", str(tmp_path / "export"), "--backend", "onnxruntime", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert "model.onnx: ONNX Runtime cannot load it" in err and "export the model again" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bench_names_a_truncated_onnx_file(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = _onnx_matmul(tmp_path / "export", size=64)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert main(["bench", str(tmp_path / "export"), "--backend", "onnxruntime", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert "model.onnx: ONNX Runtime cannot load it" in err and "truncated or damaged" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("linked", ["weights.bin", "model.onnx"])
def test_bench_of_an_onnx_export_with_a_linked_file_is_never_a_traceback(tmp_path, capsys, linked):
    """A file of the export replaced by a link to a copy outside the folder (issue case 42): ONNX Runtime
    loads it (the user's own link) or refuses it; either way one line, no traceback."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    export = tmp_path / "export"
    _onnx_matmul(export, external="weights.bin")
    outside = tmp_path / "outside"
    outside.mkdir()
    (export / linked).rename(outside / linked)
    (export / linked).symlink_to(outside / linked)
    code = main(["bench", str(export), "--backend", "onnxruntime", "--rounds", "1"])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    if code == 2:  # this one-node graph is not a transformer: once loaded, its inputs are what is named
        assert err.startswith("dsee bench: error: ") and len(err.strip().splitlines()) == 1
