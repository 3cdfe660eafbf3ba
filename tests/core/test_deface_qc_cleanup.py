"""``deface --verify`` ending in an error leaves no QC folder of its own behind (as ``defacer verify``, 8dc37e9).

``deface --verify`` claims its QC folder (ownership record), writes the README and keeps the detected label map
there before the verification runs.  When the verification then raises (the verify extra missing, an output it
cannot read, a bug) or the defacing itself ends in exit 4, the folder it created held only those files.
"""

from __future__ import annotations

import numpy as np
import pytest

from defacer.cli.main import main
from defacer.errors import VerificationError


@pytest.fixture()
def scan(tmp_path):
    from defacer.phantom import make_phantom, save_phantom

    save_phantom(make_phantom(3.0), tmp_path / "h.nii.gz", tmp_path / "l.nii.gz")
    return tmp_path / "h.nii.gz"


def _broken_verification(monkeypatch, error: BaseException) -> None:
    import defacer.verify

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(defacer.verify, "verify_pair", broken)


@pytest.mark.parametrize("error", [VerificationError("the defaced scan cannot be rendered"),
                                   ValueError("simulated bug")], ids=["defacer-error", "bug"])
@pytest.mark.parametrize("detected", [True, False], ids=["detector", "labels"])
def test_a_verification_error_removes_the_qc_folder_this_run_created(scan, tmp_path, monkeypatch, capsys, error,
                                                                     detected):
    _broken_verification(monkeypatch, error)
    out = tmp_path / "o.nii.gz"
    # with the detector, the detected label map is kept in the QC folder for the report (written before verifying)
    extra = [] if detected else ["--labels", str(tmp_path / "l.nii.gz")]
    code = main(["deface", str(scan), str(out), *extra, "--verify"])
    assert code == 1
    err = capsys.readouterr().err
    assert str(error) in err and "Traceback" not in err
    assert out.exists() and (tmp_path / "o.defacer.json").exists()  # the output the user asked for stays
    assert not (tmp_path / "o-qc").exists()


def test_a_run_ending_in_features_not_found_removes_the_qc_folder_it_created(scan, tmp_path, capsys):
    import nibabel as nib

    labels = nib.load(tmp_path / "l.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(labels.shape, np.uint8), labels.affine), tmp_path / "zero.nii.gz")
    code = main(["deface", str(scan), str(tmp_path / "o.nii.gz"), "--labels", str(tmp_path / "zero.nii.gz"),
                 "--verify"])
    assert code == 4
    assert "Nothing was written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.nii.gz", "l.nii.gz", "zero.nii.gz"]


def test_a_run_ending_in_features_not_found_removes_the_new_folders_it_made_above_the_qc_folder(scan, tmp_path,
                                                                                                  capsys):
    """An output in new folders ('new/sub/o.nii.gz'): the QC folder was removed, but 'new/sub/' (made by its claim)
    stayed behind, empty, after a run that said 'Nothing was written'."""
    import nibabel as nib

    labels = nib.load(tmp_path / "l.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(labels.shape, np.uint8), labels.affine), tmp_path / "zero.nii.gz")
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "new" / "sub" / "o.nii.gz", tmp_path / "kept" / "new" / "o.nii.gz"):
        code = main(["deface", str(scan), str(out), "--labels", str(tmp_path / "zero.nii.gz"), "--verify"])
        assert code == 4 and "Nothing was written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.nii.gz", "kept", "l.nii.gz", "zero.nii.gz"]
    assert list((tmp_path / "kept").iterdir()) == []


@pytest.mark.parametrize("existing", [[], ["notes.txt"]], ids=["empty", "user-file"])
def test_an_existing_qc_folder_is_never_removed(scan, tmp_path, monkeypatch, existing):
    _broken_verification(monkeypatch, VerificationError("cannot compare"))
    qc = tmp_path / "o-qc"
    qc.mkdir()
    for name in existing:
        (qc / name).write_text("mine")
    code = main(["deface", str(scan), str(tmp_path / "o.nii.gz"), "--labels", str(tmp_path / "l.nii.gz"),
                 "--verify"])
    assert code == 1
    assert qc.is_dir()
    for name in existing:
        assert (qc / name).read_text() == "mine"


def test_a_mask_the_user_asked_for_inside_a_new_qc_folder_keeps_it(scan, tmp_path, monkeypatch):
    _broken_verification(monkeypatch, VerificationError("cannot compare"))
    mask = tmp_path / "o-qc" / "mask.nii.gz"
    code = main(["deface", str(scan), str(tmp_path / "o.nii.gz"), "--labels", str(tmp_path / "l.nii.gz"),
                 "--save-mask", str(mask), "--verify"])
    assert code == 1
    assert mask.is_file()


@pytest.mark.parametrize("user_file", [False, True], ids=["qc-only", "with-a-user-file"])
def test_force_without_verify_removes_the_replaced_outputs_verification(scan, tmp_path, capsys, user_file):
    """HOSTILE10: 'deface --verify' then 'deface --force --features eyes' (no --verify) left the first run's QC
    folder: its report said PASS and showed the nose distorted, beside an output whose nose was not (seen on
    ixi012, main's code). Defacer's own verification files of the replaced output are removed; a user's stay."""
    from defacer.cli.deface import qc_targets
    from defacer.verify.qc import claim

    out, labels, qc = tmp_path / "o.nii.gz", tmp_path / "l.nii.gz", tmp_path / "o-qc"
    assert main(["deface", str(scan), str(out), "--labels", str(labels)]) == 0
    targets = qc_targets(qc, labels=True)
    claim(qc, targets)  # as the earlier run's --verify did, then wrote its report, pictures and label map
    for target in targets:
        target.write_text("the earlier output's verification: PASS")
    if user_file:
        (qc / "my_notes.txt").write_text("the user's")
    capsys.readouterr()
    assert main(["deface", str(scan), str(out), "--labels", str(labels), "--force", "--features", "eyes"]) == 0
    printed = capsys.readouterr().out
    assert "removed the verification of the replaced output" in printed, printed
    if user_file:
        assert sorted(p.name for p in qc.iterdir()) == [".defacer-owned.jsonl", "my_notes.txt"]
        assert (qc / "my_notes.txt").read_text() == "the user's"
    else:
        assert not qc.exists()


def test_a_new_output_beside_an_earlier_verification_is_warned_about(scan, tmp_path, caplog):
    """HOSTILE10: without --force nothing is removed, but an output written where an earlier output of that name was
    verified (the output deleted by hand, its QC folder kept) gets a warning: the report is not about it."""
    import logging

    from defacer.cli.deface import qc_targets
    from defacer.verify.qc import claim

    out, labels, qc = tmp_path / "o.nii.gz", tmp_path / "l.nii.gz", tmp_path / "o-qc"
    targets = qc_targets(qc, labels=True)
    claim(qc, targets)
    for target in targets:
        target.write_text("the earlier output's verification: PASS")
    with caplog.at_level(logging.WARNING):
        assert main(["deface", str(scan), str(out), "--labels", str(labels)]) == 0
    assert "holds the verification of an earlier output of this name" in caplog.text
    assert all(target.read_text().endswith("PASS") for target in targets), "without --force nothing is removed"


def test_force_removes_an_earlier_verification_whose_output_was_deleted_by_hand(scan, tmp_path, capsys):
    """HOSTILE12: the output deleted by hand, its QC folder kept: 'deface ... --force' (no --verify) only warned
    ('remove it, or deface again with --force --verify', though --force was given) and left the report saying PASS
    about another image beside the new output.  Under --force defacer's own verification files go; a user's stay."""
    from defacer.cli.deface import qc_targets
    from defacer.verify.qc import claim

    out, labels, qc = tmp_path / "o.nii.gz", tmp_path / "l.nii.gz", tmp_path / "o-qc"
    targets = qc_targets(qc, labels=True)
    claim(qc, targets)  # an earlier run's --verify, its output deleted by hand since
    for target in targets:
        target.write_text("the earlier output's verification: PASS")
    (qc / "my_notes.txt").write_text("the user's")
    assert not out.exists()
    assert main(["deface", str(scan), str(out), "--labels", str(labels), "--force"]) == 0
    printed = capsys.readouterr().out
    assert "removed the verification of an earlier output of this name" in printed, printed
    assert sorted(p.name for p in qc.iterdir()) == [".defacer-owned.jsonl", "my_notes.txt"]  # main: all kept
    assert (qc / "my_notes.txt").read_text() == "the user's"


def test_an_output_sharing_another_outputs_record_is_refused(scan, tmp_path, capsys):
    """HOSTILE12: 'o.nii' and 'o.nii.gz' share 'o.defacer.json' and 'o-qc'. 'deface plain.nii o.nii' beside a defaced
    'o.nii.gz' said "'o.defacer.json' already exists. Pass --force"; with --force it replaced o.nii.gz's record with
    its own (o.nii.gz left without one) and, with the earlier-verification rule, could drop o.nii.gz's verification.
    Now refused in words before anything is written, --force or not; o.nii.gz's record and verification stay."""
    import nibabel as nib

    from defacer.cli.deface import qc_targets
    from defacer.verify.qc import claim

    labels, qc, record = tmp_path / "l.nii.gz", tmp_path / "o-qc", tmp_path / "o.defacer.json"
    assert main(["deface", str(scan), str(tmp_path / "o.nii.gz"), "--labels", str(labels)]) == 0
    targets = qc_targets(qc, labels=True)
    claim(qc, targets)
    for target in targets:
        target.write_text("o.nii.gz's verification: PASS")
    before = record.read_bytes()
    plain = tmp_path / "plain.nii"
    nib.save(nib.load(str(scan)), str(plain))
    for force in ([], ["--force"]):
        capsys.readouterr()
        assert main(["deface", str(plain), str(tmp_path / "o.nii"), "--labels", str(labels), *force]) == 1
        err = capsys.readouterr().err
        assert "would share its provenance record 'o.defacer.json'" in err and "'o.nii.gz'" in err, err
    assert record.read_bytes() == before  # main: replaced under --force
    assert not (tmp_path / "o.nii").exists()
    assert all(target.read_text().endswith("PASS") for target in targets)
    # with o.nii.gz's record gone (deleted by hand), --force keeps the verification o.nii.gz may own: a warning
    record.unlink()
    assert main(["deface", str(plain), str(tmp_path / "o.nii"), "--labels", str(labels), "--force"]) == 0
    assert all(target.read_text().endswith("PASS") for target in targets)
