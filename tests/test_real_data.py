"""The suite finds the real scans from a git worktree too (tests/real_data.py), so real-data tests run there."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from real_data import ENV, main_checkout, real_data_folder


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """``tmp/main`` (a git checkout) with ``tmp/shared/data/heads`` beside it, and a real linked worktree of it made
    by ``git worktree add`` at ``tmp/wt/feature`` (no ``shared`` beside it)."""
    main = tmp_path / "main"
    main.mkdir()
    _git("init", "-q", cwd=main)
    (main / "README.md").write_text("x\n")
    _git("add", "README.md", cwd=main)
    _git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "x", cwd=main)
    (tmp_path / "wt").mkdir()
    worktree = tmp_path / "wt" / "feature"
    _git("worktree", "add", "-q", str(worktree), "-b", "feature", cwd=main)
    data = tmp_path / "shared" / "data"
    (data / "heads").mkdir(parents=True)
    return main, worktree, data


def test_a_worktree_reads_the_main_checkouts_shared_data(layout):
    main, worktree, data = layout
    assert not (worktree.parent / "shared").exists()
    assert main_checkout(worktree) == main.resolve()
    assert real_data_folder(worktree, environ={}) == data.resolve()


def test_the_folder_beside_the_checkout_comes_first(layout, tmp_path):
    main, worktree, data = layout
    assert real_data_folder(main, environ={}) == data
    beside = tmp_path / "wt" / "shared" / "data"
    beside.mkdir(parents=True)
    assert real_data_folder(worktree, environ={}) == beside


def test_the_environment_names_another_folder(layout, tmp_path):
    _main, worktree, _data = layout
    assert real_data_folder(worktree, environ={ENV: str(tmp_path / "elsewhere")}) == tmp_path / "elsewhere"


def test_no_data_anywhere_gives_the_folder_beside_the_checkout_so_tests_skip_naming_it(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".git").write_text("gitdir: /nowhere/at/all\n")
    assert main_checkout(repo) is None
    assert real_data_folder(repo, environ={}) == tmp_path / "shared" / "data"
