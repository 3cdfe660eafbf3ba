"""Every benchmark and script under ``benchmarks/`` and ``scripts/`` answers ``--help`` (exit 0, a usage text)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted([*REPO.glob("benchmarks/*.py"), *REPO.glob("scripts/*.py")])


@pytest.mark.parametrize("tool", TOOLS, ids=[f"{p.parent.name}/{p.name}" for p in TOOLS])
def test_tool_answers_help(tool: Path) -> None:
    result = subprocess.run([sys.executable, str(tool), "--help"], capture_output=True, text=True, timeout=120,
                            cwd=REPO, check=False)
    if "ModuleNotFoundError" in result.stderr:
        pytest.skip(f"{tool.name} needs an optional extra that is not installed: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower() or "Usage" in result.stdout
    assert "Traceback" not in result.stderr
