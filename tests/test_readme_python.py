"""The README's "Python" section runs as written, on a synthetic phantom in a temporary folder."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from defacer.phantom import make_phantom, save_phantom

ROOT = Path(__file__).resolve().parents[1]


def python_section() -> str:
    """The README's ``## Python`` section (up to the next ``## `` heading)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Python\n(.*?)(?=^## )", text, flags=re.DOTALL | re.MULTILINE)
    assert match, "README.md has no '## Python' section"
    return match.group(1)


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", python_section(), flags=re.DOTALL)


def test_the_python_section_has_examples():
    blocks = python_blocks()
    assert len(blocks) >= 3
    code = "\n".join(blocks)
    for name in ("defacer.deface(", "defacer.deface_image(", "labels=", "save_volume"):
        assert name in code


def test_the_python_examples_run(tmp_path, monkeypatch, capsys):
    phantom = make_phantom(2.0)
    save_phantom(phantom, tmp_path / "sub-01_T1w.nii.gz", tmp_path / "my_labels.nii.gz")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    for number, block in enumerate(python_blocks(), start=1):
        # Running the README's own code is the point; a failure's traceback names the block.
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)  # noqa: S102
    original = nib.load(str(tmp_path / "sub-01_T1w.nii.gz"))
    for name in ("sub-01_T1w_defaced.nii.gz", "sub-01_T1w_defaced_exact.nii.gz"):
        out = nib.load(str(tmp_path / name))
        assert out.shape == original.shape and np.array_equal(out.affine, original.affine)
        assert out.get_data_dtype() == original.get_data_dtype()
        changed = np.asarray(out.dataobj) != np.asarray(original.dataobj)
        assert changed.any() and not (changed & phantom.brain).any()
    printed = capsys.readouterr().out
    assert "'ears': 0" in printed and "not requested" in printed
