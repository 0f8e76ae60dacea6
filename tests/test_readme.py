"""The README's Python examples run as written, with shorter training."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
SHORTER = {"model.learn(100_000)": "model.learn(64)", '"SlipperyAnt-v0",': '"SlipperyAnt-v0", n_steps=64, batch_size=32,'}


def python_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_the_examples() -> None:
    assert len(python_examples()) == 2


@pytest.mark.parametrize("index", [0, 1], ids=["sb3", "torch"])
def test_readme_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code = python_examples()[index]
    for long, short in SHORTER.items():
        assert index == 1 or long in code, f"the README's SB3 example changed: update SHORTER ({long!r})"
        code = code.replace(long, short)
    data = [(torch.randn(32, 8), torch.randn(32, 1)) for _ in range(200)]
    exec(compile(code, f"README example {index}", "exec"), {"data": data, "x_probe": torch.randn(64, 8)})
    printed = capsys.readouterr().out
    assert ("actor/l0" in printed) if index == 0 else ("health/l1/effective_rank" in printed)
