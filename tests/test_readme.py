"""README.md shows two commands that work on a fresh clone; CI runs the test one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)


def test_readme_has_a_demo_command_and_a_test_command():
    blocks = [b.strip() for b in _bash_blocks()]
    assert any(b.startswith("python3 -m venv") and "defacer demo" in b for b in blocks)
    assert any(b.startswith("python3 -m venv") and "pytest" in b for b in blocks)


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = next(b.strip() for b in _bash_blocks() if "pytest" in b and b.startswith("python3 -m venv"))
    assert test_command in (ROOT / ".ci" / "run").read_text()
