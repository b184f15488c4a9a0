"""README's two fresh-machine commands stay true: CI runs the test command verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fresh_machine_commands() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    commands = dict(re.findall(r"^# (main job|tests)\n(.+)$", text, flags=re.MULTILINE))
    assert set(commands) == {"main job", "tests"}, "README must give '# main job' and '# tests' commands"
    return commands


def test_ci_runs_readmes_test_command_verbatim():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert fresh_machine_commands()["tests"] in ci_lines


def test_both_commands_install_torch_first():
    for command in fresh_machine_commands().values():
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && ")


def python_snippets() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.MULTILINE | re.DOTALL)


def test_every_python_snippet_runs_verbatim(tmp_path, monkeypatch):
    """In a fresh folder holding the repository's examples and a (tiny) trained demo run where the snippets expect
    `qgn demo`'s."""
    from qgn import QGNConfig
    from training.config import RunConfig, TrainConfig
    from training.datasets import DataConfig
    from training.trainer import train
    from training.transforms import AugmentConfig

    (tmp_path / "examples").symlink_to(ROOT / "examples")
    train(RunConfig(model=QGNConfig.for_depth(3, num_classes=6),
                    data=DataConfig(dataset="synthetic:4,size=32", augment=AugmentConfig(crop=(32, 32))),
                    train=TrainConfig(epochs=1, batch_size=2, progress=False, test=False)),
          tmp_path / "runs" / "demo" / "run_qgn")
    monkeypatch.chdir(tmp_path)
    snippets = python_snippets()
    assert len(snippets) >= 3
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), {"__name__": "readme"})
