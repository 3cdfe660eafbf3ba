"""``train --data D --labels-dir L`` reads only inside its two folders: the label provenance's scan names and
``source`` paths were joined as given (HOSTILE7's open item 4), so a hostile labels folder made ``train`` read any
file the user can read (another study's head, as a scan; any NIfTI as a label map)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defacer.cli.main import main
from defacer.phantom import make_phantom, save_phantom


@pytest.mark.parametrize(("entry", "words"), [
    ({"h": {"source": "../outside/h.nii.gz"}}, "without '..'"),
    ({"h": {"source": "ABSOLUTE"}}, "relative to it"),
    ({"../outside/h": {"source": "h.nii.gz"}}, "expected a plain scan name"),
    ({"h": {"source": "link.nii.gz"}}, "symbolic link out of --data"),
    ({"lab": {"source": "h.nii.gz"}}, "symbolic link out of --labels-dir"),
], ids=["dotdot source", "absolute source", "path as name", "source linked out", "label map linked out"])
def test_a_provenance_entry_that_leads_outside_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          entry: dict, words: str) -> None:
    data, labels_dir, outside = tmp_path / "data", tmp_path / "labels", tmp_path / "outside"
    for folder in (data, labels_dir, outside):
        folder.mkdir()
    save_phantom(make_phantom(6.0), outside / "h.nii.gz", outside / "h.labels.nii.gz")
    save_phantom(make_phantom(6.0), data / "h.nii.gz", labels_dir / "h.labels.nii.gz")
    (data / "link.nii.gz").symlink_to(outside / "h.nii.gz")
    (labels_dir / "lab.labels.nii.gz").symlink_to(outside / "h.labels.nii.gz")
    text = json.dumps(entry).replace("ABSOLUTE", str(outside / "h.nii.gz"))
    (labels_dir / "provenance.json").write_text(text)
    cache, out = tmp_path / "c.npz", tmp_path / "out"
    code = main(["train", "--data", str(data), "--labels-dir", str(labels_dir), "--cache", str(cache), "--out",
                 str(out), "--epochs", "0", "--phantoms", "0"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert words in err and "bug" not in err, err
    assert not cache.exists()


def test_a_plain_entry_still_loads(tmp_path: Path) -> None:
    from defacer.train.data import load_real_samples

    data, labels_dir = tmp_path / "data", tmp_path / "labels"
    data.mkdir()
    labels_dir.mkdir()
    (data / "heads").mkdir()
    save_phantom(make_phantom(6.0), data / "heads" / "h.nii.gz", labels_dir / "h.labels.nii.gz")
    samples = load_real_samples(data, labels_dir, {"h": "heads/h.nii.gz"}, shape=(32, 32, 32), spacing=6.0)
    assert [s.name for s in samples] == ["h"]
