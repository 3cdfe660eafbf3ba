"""Bad input gets a clear message and a non-zero exit, never a traceback, and nothing is lost."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from defacer.cli.main import main
from defacer.io.atomic import atomic_outputs
from defacer.phantom import make_phantom, save_phantom


@pytest.fixture
def scan(tmp_path: Path) -> tuple[Path, Path]:
    phantom = make_phantom(4.0)
    path, labels = tmp_path / "head.nii.gz", tmp_path / "labels.nii.gz"
    save_phantom(phantom, path, labels)
    return path, labels


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_missing_input_file_says_so(tmp_path, capsys):
    code, err = run(["deface", str(tmp_path / "nope.nii.gz"), str(tmp_path / "out.nii.gz")], capsys)
    assert code == 1 and "No such file" in err


def test_empty_file_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    code, err = run(["deface", str(empty), str(tmp_path / "out.nii.gz")], capsys)
    assert code == 1 and "empty" in err


def test_truncated_gzip_is_reported_as_truncated(scan, tmp_path, capsys):
    data = scan[0].read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    code, err = run(["deface", str(cut), str(tmp_path / "out.nii.gz"), "--labels", str(scan[1])], capsys)
    assert code == 1 and ("truncated" in err or "corrupt" in err)
    assert not (tmp_path / "out.nii.gz").exists()


def test_text_file_named_nifti_is_not_nifti(tmp_path, capsys):
    fake = tmp_path / "fake.nii"
    fake.write_text("this is not an image\n" * 40)
    code, err = run(["deface", str(fake), str(tmp_path / "out.nii")], capsys)
    assert code == 1 and "not a NIfTI" in err


def test_unsupported_extension_lists_supported_ones(tmp_path, capsys):
    other = tmp_path / "scan.png"
    other.write_bytes(b"\x89PNG....")
    code, err = run(["deface", str(other), str(tmp_path / "out.png")], capsys)
    assert code == 1 and ".nii.gz" in err


def test_two_dimensional_image_is_refused_with_advice(tmp_path, capsys):
    flat = tmp_path / "slice.nii"
    nib.save(nib.Nifti1Image(np.zeros((64, 64), np.int16), np.eye(4)), str(flat))
    code, err = run(["deface", str(flat), str(tmp_path / "out.nii")], capsys)
    assert code == 1 and "2D" in err


def test_four_dimensional_image_is_refused_with_advice(tmp_path, capsys):
    series = tmp_path / "bold.nii"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 32, 5), np.int16), np.eye(4)), str(series))
    code, err = run(["deface", str(series), str(tmp_path / "out.nii")], capsys)
    assert code == 1 and "4D" in err and "Extract" in err


def test_nan_voxels_are_refused(tmp_path, capsys):
    data = np.ones((32, 32, 32), np.float32)
    data[3, 3, 3] = np.nan
    path = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    code, err = run(["deface", str(path), str(tmp_path / "out.nii")], capsys)
    assert code == 1 and "NaN" in err


def test_complex_voxels_are_refused_and_nothing_is_written(tmp_path, capsys):
    """A complex image (real and imaginary parts) was defaced on its real part alone, its other part kept."""
    phantom = make_phantom(4.0)
    data = phantom.volume.values(np.float32) * (1.0 + 1.0j)
    path = tmp_path / "complex.nii"
    nib.save(nib.Nifti1Image(data.astype(np.complex64), phantom.volume.affine), str(path))
    code, err = run(["deface", str(path), str(tmp_path / "out.nii")], capsys)
    assert code == 1 and "complex" in err and "magnitude" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["complex.nii"]


@pytest.mark.parametrize("affine", [np.diag([1e-4, 1e-4, 1e-4, 1]), np.diag([1.0, 1.0, 0.0, 1.0]), np.diag([50.0, 1, 1, 1])])
def test_absurd_affine_is_refused(tmp_path, capsys, affine):
    path = tmp_path / "weird.nii"
    image = nib.Nifti1Image(np.ones((32, 32, 32), np.int16), np.eye(4))
    image.set_qform(None, code=0)
    image.set_sform(affine, code=2)
    nib.save(image, str(path))
    code, err = run(["deface", str(path), str(tmp_path / "out.nii")], capsys)
    assert code == 1 and ("voxel sizes" in err or "singular" in err or "affine" in err)


def test_output_equal_to_input_is_refused_and_input_untouched(scan, capsys):
    before = scan[0].read_bytes()
    code, err = run(["deface", str(scan[0]), str(scan[0]), "--labels", str(scan[1]), "--force"], capsys)
    assert code == 1 and "never writes over" in err
    assert scan[0].read_bytes() == before


def test_existing_output_needs_force(scan, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"keep me")
    code, err = run(["deface", str(scan[0]), str(out), "--labels", str(scan[1])], capsys)
    assert code == 1 and "--force" in err
    assert out.read_bytes() == b"keep me"
    assert main(["deface", str(scan[0]), str(out), "--labels", str(scan[1]), "--force"]) == 0
    assert out.read_bytes() != b"keep me"


def test_unwritable_output_folder_is_reported(scan, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = run(["deface", str(scan[0]), str(blocker / "out.nii.gz"), "--labels", str(scan[1])], capsys)
    assert code == 1 and "output folder" in err


def test_format_change_is_refused(scan, tmp_path, capsys):
    code, err = run(["deface", str(scan[0]), str(tmp_path / "out.nrrd"), "--labels", str(scan[1])], capsys)
    assert code == 1 and "format" in err


def test_label_map_on_another_grid_is_refused(scan, tmp_path, capsys):
    other = tmp_path / "other_labels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), str(other))
    code, err = run(["deface", str(scan[0]), str(tmp_path / "out.nii.gz"), "--labels", str(other)], capsys)
    assert code == 1 and "grid" in err


def test_label_map_with_unknown_values_is_refused(scan, tmp_path, capsys):
    image = nib.load(str(scan[1]))
    bad = tmp_path / "bad_labels.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) * 3, image.affine), str(bad))
    code, err = run(["deface", str(scan[0]), str(tmp_path / "out.nii.gz"), "--labels", str(bad)], capsys)
    assert code == 1 and "expected 0" in err


@pytest.mark.parametrize("seed", ["-1", "-5000000000"])
def test_a_negative_seed_is_refused_in_words(scan, tmp_path, capsys, seed):
    """numpy refused it deep inside, which the CLI reported as a bug in defacer."""
    code, err = run(["deface", str(scan[0]), str(tmp_path / "o.nii.gz"), "--labels", str(scan[1]),
                     "--seed", seed], capsys)
    assert code == 1 and "seed" in err and ">= 0" in err and "bug" not in err
    assert not (tmp_path / "o.nii.gz").exists()


def test_the_api_refuses_a_seed_that_is_no_whole_number() -> None:
    from defacer.options import DefaceOptions

    for seed in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed"):
            DefaceOptions(seed=seed)  # type: ignore[arg-type]
    assert DefaceOptions(seed=np.int64(7)).seed == 7


@pytest.mark.parametrize("name", ["folder", ".", "..", "/"])
def test_a_folder_as_the_output_of_a_file_scan_is_refused_naming_a_file_to_give(scan, tmp_path, capsys,
                                                                                  monkeypatch, name):
    """'.' and '/' crashed ('has an empty name', reported as a bug); an existing folder was called an
    output that exists, to be replaced with --force, which it never could be."""
    work = tmp_path / "work"
    (work / "folder").mkdir(parents=True)
    monkeypatch.chdir(work / "folder" if name == ".." else work)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, err = run(["deface", str(scan[0]), name, "--labels", str(scan[1]), "--force"], capsys)
    assert code == 1 and "bug" not in err
    assert ("root of the file system" if name == "/" else "is a folder") in err
    assert "head_defaced.nii.gz" in err  # the file name to give instead
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing removed


def test_unknown_feature_name_is_refused(scan, tmp_path, capsys):
    code, err = run(["deface", str(scan[0]), str(tmp_path / "o.nii.gz"), "--labels", str(scan[1]),
                     "--features", "eyes,mouth"], capsys)
    assert code == 1 and "mouth" in err


def test_interrupted_write_leaves_no_output_and_no_temporary_files(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(KeyboardInterrupt), atomic_outputs([target]) as (temp,):
        temp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_input_files_are_never_modified(scan, tmp_path):
    stamp = [(p.read_bytes(), p.stat().st_mtime_ns) for p in scan]
    assert main(["deface", str(scan[0]), str(tmp_path / "o.nii.gz"), "--labels", str(scan[1]), "--save-mask",
                 str(tmp_path / "m.nii.gz")]) == 0
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in scan] == stamp


def test_gzip_integrity_of_output(scan, tmp_path):
    out = tmp_path / "o.nii.gz"
    assert main(["deface", str(scan[0]), str(out), "--labels", str(scan[1])]) == 0
    with gzip.open(out) as handle:
        assert len(handle.read()) > 348


def test_an_unforeseen_system_error_is_one_message_not_a_traceback(scan, tmp_path, capsys, monkeypatch):
    """An OSError the command line has no words for (here a network file system dropping the connection
    while the scan is read) ends in the last-resort message and exit 1; it escaped main() as a traceback
    when the handler for the system errors it knows re-raised every other one."""
    import errno

    import defacer.io

    def reset(*args: object, **kwargs: object) -> None:
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")

    monkeypatch.setattr(defacer.io, "load_volume", reset)
    code, err = run(["deface", str(scan[0]), str(tmp_path / "out.nii.gz"), "--labels", str(scan[1])], capsys)
    assert code == 1 and "unexpected error: ConnectionResetError" in err
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_file_name_that_is_not_utf8_is_defaced_and_printed(scan, tmp_path, capsys):
    """A Latin-1 name ('é' as the byte 0xE9): with stdout strict (a UTF-8 locale), printing 'Defaced IN -> OUT'
    raised UnicodeEncodeError after the output was written: "unexpected error ... a bug", exit 1."""
    source = tmp_path / os.fsdecode(b"t\xeate.nii.gz")
    scan[0].rename(source)
    output = tmp_path / os.fsdecode(b"t\xeate_defaced.nii.gz")
    assert main(["deface", str(source), "--labels", str(scan[1])]) == 0
    out = capsys.readouterr().out
    assert output.is_file() and "t\\udceate_defaced.nii.gz" in out
