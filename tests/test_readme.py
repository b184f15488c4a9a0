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
