"""Path arguments of the command line: an empty name is refused, never read as the current folder.

``Path("")`` is ``Path(".")``: ``defacer verify A B --out ""`` (an unset shell variable, ``--out "$QC"``)
wrote the renders of the original face into the current folder, ``deface "" `` read the current folder as
a DICOM series, and ``--labels ""`` was refused for a wrong reason.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def path_argument(text: str) -> Path:
    """A file or folder name given on the command line, refused when it is empty or only blanks."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"expected a file or folder name, found {'an empty name' if not text else 'only blanks'} "
            "(an unset shell variable?); write '.' for the current folder")
    return Path(text)


def text_path_argument(text: str) -> str:
    """As :func:`path_argument`, for the commands that keep the name as text."""
    path_argument(text)
    return text
