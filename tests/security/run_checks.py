"""Checks the security batteries share: run the command line and see that it refused in words,
changed no input, and left nothing behind but its own output."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from defacer.cli.main import main

#: The first 132 bytes of every DICOM file defacer writes: a zeroed preamble, then the magic.
CLEAN_PREAMBLE = b"\x00" * 128 + b"DICM"


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` (relative POSIX name -> hex digest)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def plant_user_file(folder: Path, name: str) -> Path:
    """Write a user's file ``folder/name`` (parents made) holding ``years of work``: what defacer must never replace."""
    mine = folder / name
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_text("years of work\n")
    return mine


def entries(folder: Path) -> set[str]:
    """Names in ``folder``, less defacer's own hidden ownership record of an output named ``out``
    (``.out.defacer-output.json``)."""
    return {p.name for p in folder.iterdir() if not (p.name.startswith(".out.") and "defacer" in p.name)}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str], *,
            refusals: Sequence[str] = ("error",)) -> tuple[int, str]:
    """Run ``defacer ARGV``; (exit status, stdout + stderr).

    Never a traceback or defacer's "bug" message; a non-zero status comes with one of
    ``refusals`` in the error output (case-insensitive).
    """
    code = main(argv)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text and "bug in defacer" not in text, text
    if code != 0:
        assert any(word.lower() in captured.err.lower() for word in refusals), text
    return code, text


def run_on_input(argv: list[str], capsys: pytest.CaptureFixture[str], *, source: Path, out: Path,
                 allowed: set[str], refusals: Sequence[str] = ("error",)) -> tuple[int, str]:
    """:func:`run_cli` on the input folder ``source``, writing ``out`` beside it; (exit status, text).

    The input is unchanged (hashed before and after); the folder holding both has only
    ``allowed`` names afterwards; a refused run (non-zero status) wrote no ``out``.
    """
    before = digest(source)
    code, text = run_cli(argv, capsys, refusals=refusals)
    assert digest(source) == before, "the input changed"
    assert entries(source.parent) <= allowed
    if code != 0:
        assert not out.exists(), "a refused run left its output"
    return code, text
