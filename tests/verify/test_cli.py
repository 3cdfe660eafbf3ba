"""`defacer verify` and `defacer evaluate` from the command line, on phantoms."""

from __future__ import annotations

import json

import pytest

from defacer.cli.main import main
from defacer.evaluate import evaluate_folder
from defacer.phantom import make_phantom, save_phantom
from defacer.verify.evaluate import find_scans

pytestmark = pytest.mark.usefixtures("detectors")


def _save(volume, path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume.raw, volume.affine), str(path))


def test_verify_command_writes_the_report_and_exits_5_when_inconclusive(phantom, tmp_path, capsys) -> None:
    # The "defaced" scan is an unchanged copy: its renders are the original's, so whatever a detector
    # finds after, it found before. The phantom is no face to the detectors (none in the original's
    # renders), so the verdict is INCONCLUSIVE whatever Face Mesh makes of an edited phantom (it finds a
    # "face" on some since the issue 14 distortion). Issue 13: inconclusive is not a green PASS.
    _save(phantom.volume, tmp_path / "head.nii.gz")
    _save(phantom.volume, tmp_path / "head_defaced.nii.gz")
    (tmp_path / "head_defaced.defacer.json").write_text(json.dumps({"seed": 3}))
    import nibabel as nib

    nib.save(nib.Nifti1Image(phantom.labels, phantom.volume.affine), str(tmp_path / "labels.nii.gz"))
    code = main(["verify", str(tmp_path / "head.nii.gz"), str(tmp_path / "head_defaced.nii.gz"),
                 "--labels", str(tmp_path / "labels.nii.gz")])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "head_defaced-qc" / "verify_summary.json").read_text())
    assert summary["face_found_before"] == summary["face_found_after"] == [], summary
    assert code == 5, out
    assert out.startswith("INCONCLUSIVE")
    report = tmp_path / "head_defaced-qc" / "verify_report.html"
    text = report.read_text()
    assert report.is_file() and "&quot;seed&quot;: 3" in text
    assert 'class="verdict INCONCLUSIVE"' in text and 'class="verdict PASS"' not in text
    assert "ORIGINAL faces" in out and str(tmp_path / "head_defaced-qc") in out
    assert (tmp_path / "head_defaced-qc" / "before_after.png").is_file()


def test_files_and_folders_not_named_in_utf8_are_verified_and_evaluated(phantom, tmp_path, capsys) -> None:
    """A scan or folder named in Latin-1 ('é' as the byte 0xE9; Python keeps it as a lone surrogate): 'verify' and
    'deface --verify' wrote the defaced scan, then stopped with "unexpected error: UnicodeEncodeError ... This is a bug"
    writing the report (its title names the file); 'evaluate' stopped before anything, writing its ownership record."""
    import os

    folder = tmp_path / os.fsdecode(b"t\xeate")
    folder.mkdir()
    _save(phantom.volume, folder / os.fsdecode(b"h\xe9.nii.gz"))
    _save(phantom.volume, tmp_path / os.fsdecode(b"h\xe9_defaced.nii.gz"))
    out = tmp_path / os.fsdecode(b"qc\xe9")
    code = main(["verify", str(folder / os.fsdecode(b"h\xe9.nii.gz")), str(tmp_path / os.fsdecode(b"h\xe9_defaced.nii.gz")),
                 "--out", str(out)])
    assert code in (0, 3, 5) and "unexpected" not in capsys.readouterr().err
    assert "defacer verify: h\ufffd_defaced.nii.gz" in (out / "verify_report.html").read_text(encoding="utf-8")
    code = main(["evaluate", str(folder), "--out", str(tmp_path / os.fsdecode(b"ev\xe9"))])
    assert code in (0, 3, 5) and "unexpected" not in capsys.readouterr().err
    result = json.loads((tmp_path / os.fsdecode(b"ev\xe9") / "evaluation.json").read_text(encoding="utf-8"))
    assert [s["name"] for s in result["scans"]] == [os.fsdecode(b"h\xe9")]
    assert (tmp_path / os.fsdecode(b"ev\xe9") / os.fsdecode(b"h\xe9") / "verify_report.html").is_file()
    assert "h\ufffd" in (tmp_path / os.fsdecode(b"ev\xe9") / "evaluation.html").read_text(encoding="utf-8")
    # A rerun finds its own files in the ownership record (the names read back as written).
    code = main(["evaluate", str(folder), "--out", str(tmp_path / os.fsdecode(b"ev\xe9"))])
    assert code in (0, 3, 5) and "did not write" not in capsys.readouterr().err


def test_verify_never_writes_its_renders_into_a_folder_holding_the_scans(phantom, tmp_path, capsys,
                                                                       monkeypatch) -> None:
    """HOSTILE13: 'verify orig.nii.gz shared/defaced.nii.gz --out shared' (or '--out .' in the data folder, or
    '--out ..') wrote the report, the README and renders of the ORIGINAL face into the folder holding the defaced
    scan, the folder one would share; only files the report names were compared with the inputs, never the folder
    itself.  A QC folder that holds (or is) an input's folder is refused, as 'deface --verify' and 'evaluate'
    refuse theirs."""
    shared = tmp_path / "shared"
    shared.mkdir()
    _save(phantom.volume, tmp_path / "orig.nii.gz")
    _save(phantom.volume, shared / "defaced.nii.gz")
    monkeypatch.chdir(shared)
    for out in (shared, ".", "..", tmp_path):
        code = main(["verify", str(tmp_path / "orig.nii.gz"), str(shared / "defaced.nii.gz"), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 1 and "contains the input" in err and "Traceback" not in err, err
    assert sorted(p.name for p in shared.iterdir()) == ["defaced.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orig.nii.gz", "shared"]


def test_verify_command_exits_3_when_the_brain_changed(phantom, tmp_path, capsys) -> None:
    raw = phantom.volume.raw.copy()
    raw[phantom.brain] = 0
    _save(phantom.volume, tmp_path / "a.nii.gz")
    _save(phantom.volume.with_raw(raw), tmp_path / "b.nii.gz")
    code = main(["verify", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), "--out", str(tmp_path / "r")])
    assert code == 3
    out = capsys.readouterr().out
    assert out.startswith("FAIL")
    assert json.loads((tmp_path / "r" / "verify_summary.json").read_text())["verdict"] == "FAIL"
    # the next step is said, for this cause (not the face advice: no face was found after)
    from defacer.verify.verdict import REMEDY_BRAIN, REMEDY_FACE

    assert REMEDY_BRAIN in out and REMEDY_FACE not in out
    report = (tmp_path / "r" / "verify_report.html").read_text()
    assert "What to do: check that the defaced scan was made from this original" in report


def test_verify_command_reports_a_missing_file_without_a_traceback(tmp_path, capsys) -> None:
    code = main(["verify", str(tmp_path / "nope.nii.gz"), str(tmp_path / "nope2.nii.gz")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "nope.nii.gz" in err


def test_evaluate_refuses_scans_that_share_a_name(tmp_path, capsys) -> None:
    """'a.nii.gz' and 'a.mgz' were both evaluated as 'a': the second's report replaced the first's in OUT/a/, and the
    re-identification gallery held one subject for two scans ('1/1', chance 100 %)."""
    scans = tmp_path / "scans"
    (scans / "b").mkdir(parents=True)
    for name in ("a.nii.gz", "A.mgz", "b.nrrd", "b/0001.dcm", "c.nii"):
        (scans / name).write_bytes(b"not read: the names are checked first")
    code = main(["evaluate", str(scans), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "'A.mgz' and 'a.nii.gz' share the name 'A'" in err and "'b' and 'b.nrrd' share the name 'b'" in err
    assert "c.nii" not in err and "nothing was written" in err
    assert not (tmp_path / "eval").exists()


def test_evaluate_scores_every_scan_and_reports_reidentification(tmp_path, capsys) -> None:
    scans, labels = tmp_path / "scans", tmp_path / "labels"
    scans.mkdir()
    labels.mkdir()
    for name, contrast, shift in (("a", "T1", (0, 0, 0)), ("b", "T2", (4, -3, 2))):
        p = make_phantom(3.0, contrast=contrast, shift_mm=shift)
        save_phantom(p, scans / f"{name}.nii.gz", labels / f"{name}.labels.nii.gz")
    (scans / "notes.txt").write_text("not a scan")
    assert [s.name for s in find_scans(scans)] == ["a", "b"]
    code = main(["evaluate", str(scans), "--labels-dir", str(labels), "--reference-dir", str(labels),
                 "--out", str(tmp_path / "eval")])
    captured = capsys.readouterr()
    out = captured.out
    assert "re-identification rank-1" in out
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert [s["name"] for s in result["scans"]] == ["a", "b"]
    for s in result["scans"]:
        assert s["features_found"] == ["eyes", "nose", "ears"]
        assert s["dice"] == {"eyes": 1.0, "nose": 1.0, "ears": 1.0}
        assert s["seconds"] > 0 and s["peak_rss_mb"] > 0
        assert (tmp_path / "eval" / s["name"] / "verify_report.html").is_file()
    overall = result["overall"]
    # Each scan's real verdict follows from its findings and is counted as such (issue 13). Which verdict
    # a defaced phantom gets is Face Mesh's business (since the issue 14 distortion it finds a "face" on
    # some defaced phantoms but none on their originals: FAIL); none is a PASS, as no original shows a face.
    verdicts = [s["verdict"] for s in result["scans"]]
    for s in result["scans"]:
        assert s["face_found_before"] == [], s
        assert s["verdict"] in ("FAIL", "INCONCLUSIVE") and s["passed"] is False and s["conclusive"] is False, s
        assert s["verdict"] == "FAIL" or not s["face_found_after"], s
    counts = (verdicts.count("PASS"), verdicts.count("FAIL"), verdicts.count("INCONCLUSIVE"))
    assert (overall["passed"], overall["failed"], overall["inconclusive"]) == counts == (0, *counts[1:])
    assert f"passed 0, failed {counts[1]}, inconclusive {counts[2]};" in out
    # no scan passed: the exit status says so, as 'defacer verify' would for the worst scan (3 FAIL, 5 INCONCLUSIVE)
    assert code == (3 if counts[1] else 5), out
    assert f"(exit status {code})" in captured.err
    assert overall["reid_chance"] == 0.5
    assert overall["reid_rank1_defaced"] is not None and overall["reid_rank1_baseline_other_angle"] is not None
    assert 0 <= overall["reid_p_value_defaced"] <= 1 and overall["reid_n"] == 2
    assert "binomial" in overall["reid_test"] and "chance" in overall["reid_verdict"]
    assert (tmp_path / "eval" / "evaluation.html").read_text().count("data:image/png;base64,") == 4


def test_evaluate_never_lists_a_scan_linked_out_of_its_folder(tmp_path, caplog) -> None:
    """A folder from elsewhere holding ``patient.nii.gz -> ~/study/patient.nii.gz`` (or a link to a DICOM folder):
    ``evaluate`` rendered that face into its report and the re-identification gallery (HOSTILE18, main 0deda10); a
    ``batch`` leaves such a scan out. Left out now with a warning naming it; a link inside the folder still counts."""
    import logging

    private, scans = tmp_path / "private", tmp_path / "scans"
    for folder in (private, scans, private / "series"):
        folder.mkdir()
    save_phantom(make_phantom(4.0), scans / "own.nii.gz")
    save_phantom(make_phantom(4.0, seed=1), private / "patient.nii.gz")
    (private / "series" / "0001.dcm").write_bytes(b"not read")
    (scans / "patient.nii.gz").symlink_to(private / "patient.nii.gz")
    (scans / "series").symlink_to(private / "series")
    (scans / "again.nii.gz").symlink_to("own.nii.gz")  # inside the folder: a scan of its own
    with caplog.at_level(logging.WARNING):
        assert [s.name for s in find_scans(scans)] == ["again", "own"]
    said = caplog.text
    assert "'patient.nii.gz' is a symbolic link to a file outside" in said and "not evaluated" in said
    assert "'series' is a symbolic link to a folder outside" in said


def test_evaluate_never_reads_a_label_map_linked_out_of_its_folder(tmp_path, caplog) -> None:
    """``--labels-dir``/``--reference-dir`` holding ``a.labels.nii.gz -> ~/private/...``: evaluate read the map from
    elsewhere as that scan's detector or reference (HOSTILE18's leftover; main de9c2db). Now a linked-out detector
    map is that scan's error in words, a linked-out reference gives no Dice with a warning; maps inside count."""
    import logging

    scans, labels, reference, private = (tmp_path / n for n in ("scans", "labels", "reference", "private"))
    for folder in (scans, labels, reference, private):
        folder.mkdir()
    save_phantom(make_phantom(3.0), scans / "a.nii.gz", private / "a.labels.nii.gz")
    save_phantom(make_phantom(3.0, seed=1), scans / "b.nii.gz", labels / "b.labels.nii.gz")
    (labels / "a.labels.nii.gz").symlink_to(private / "a.labels.nii.gz")
    (reference / "b.labels.nii.gz").symlink_to(labels / "b.labels.nii.gz")
    with caplog.at_level(logging.WARNING):
        result = evaluate_folder(scans, tmp_path / "eval", labels_dir=labels, reference_dir=reference)
    a, b = result["scans"]
    assert "'a.labels.nii.gz' in --labels-dir" in a["error"] and "symbolic link to a file outside" in a["error"]
    assert "not read" in a["error"] and "cp -L" in a["error"]
    assert "error" not in b and b["dice"] is None and b["reference"] is None
    assert "no Dice for 'b'" in caplog.text and "--reference-dir" in caplog.text
    (reference / "b.labels.nii.gz").unlink()
    (reference / "b.labels.nii.gz").symlink_to("../reference/own.nii.gz")
    (reference / "own.nii.gz").write_bytes((labels / "b.labels.nii.gz").read_bytes())
    assert evaluate_folder(scans, tmp_path / "eval2", labels_dir=labels, reference_dir=reference)["scans"][1]["dice"]


def test_evaluate_records_a_missing_label_map_as_that_scans_error(tmp_path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    save_phantom(make_phantom(3.0), scans / "a.nii.gz")
    result = evaluate_folder(scans, tmp_path / "eval", labels_dir=tmp_path)
    assert "No label map" in result["scans"][0]["error"]
    assert result["overall"]["errors"] == 1
    assert (tmp_path / "eval" / "evaluation.json").is_file()


def test_evaluate_refuses_a_negative_seed_before_writing_anything(tmp_path, capsys) -> None:
    """It reached the options only after claiming OUT, and was then reported as a bug in defacer."""
    scans = tmp_path / "scans"
    scans.mkdir()
    save_phantom(make_phantom(4.0), scans / "head.nii.gz")
    out = tmp_path / "eval"
    assert main(["evaluate", str(scans), "--out", str(out), "--seed", "-3"]) == 1
    err = capsys.readouterr().err
    assert "seed" in err and "bug" not in err
    assert not out.exists()


def test_each_verdict_names_the_next_step_for_its_cause() -> None:
    """A FAIL says what to do: a larger nose removal and eye cover (measured to clear 3 of the 3 heads the
    shipped detector left a face on) for a face found after, a check of the files for a changed brain."""
    from defacer.verify.verdict import REMEDY_BRAIN, REMEDY_FACE, remedy

    face = {"verdict": "FAIL", "face_found_after": ["front:facemesh"], "brain_untouched": True}
    brain = {"verdict": "FAIL", "face_found_after": [], "brain_untouched": False}
    both = {"verdict": "FAIL", "face_found_after": ["front:dlib_cnn"], "brain_untouched": False}
    assert remedy(face) == REMEDY_FACE and "--nose-scale 3" in REMEDY_FACE
    assert remedy(brain) == REMEDY_BRAIN and remedy(both) == REMEDY_BRAIN
    assert remedy({"verdict": "PASS", "face_found_after": [], "brain_untouched": True}) is None
    assert remedy({"verdict": "INCONCLUSIVE", "face_found_after": [], "brain_untouched": True}) is None


def test_evaluate_exits_3_when_a_scan_fails_verification(tmp_path, monkeypatch, capsys) -> None:
    """Hostile pass, defect left: 'defacer evaluate' exited 0 when scans FAILed verification (a face found after
    defacing), so a script could not tell; 'defacer verify' exits 3 for the same scan. The verdict is forced
    here (the real verification runs, then its summary says FAIL), so the test does not hang on what Face Mesh
    makes of a phantom."""
    import defacer.evaluate

    real = defacer.evaluate.verify_pair

    def failing(*args, **kwargs):
        result = real(*args, **kwargs)
        result.summary.update(verdict="FAIL", passed=False)
        return result

    monkeypatch.setattr(defacer.evaluate, "verify_pair", failing)
    scans, labels = tmp_path / "scans", tmp_path / "labels"
    scans.mkdir()
    labels.mkdir()
    save_phantom(make_phantom(4.0), scans / "a.nii.gz", labels / "a.labels.nii.gz")
    code = main(["evaluate", str(scans), "--labels-dir", str(labels), "--out", str(tmp_path / "eval")])
    captured = capsys.readouterr()
    assert code == 3, captured.out
    assert "1 FAIL (a)" in captured.err and "(exit status 3)" in captured.err


@pytest.mark.parametrize("counts, status", [
    ({"errors": 0, "failed": 0, "inconclusive": 0}, 0),
    ({"errors": 0, "failed": 0, "inconclusive": 2}, 5),
    ({"errors": 0, "failed": 1, "inconclusive": 2}, 3),
    ({"errors": 1, "failed": 1, "inconclusive": 0}, 1),
])
def test_the_evaluations_exit_status_is_its_worst_scans(counts, status) -> None:
    from defacer.cli.evaluate import exit_status

    assert exit_status(counts) == status


def test_evaluate_reads_label_maps_with_every_ending_batch_reads_and_never_evaluates_one(tmp_path) -> None:
    """'evaluate' knew label maps only as .labels.nii.gz: a head.labels.nii beside the scans was defaced and scored as a
    scan of its own, and --labels-dir did not find it, while 'batch --labels-dir' did."""
    import nibabel as nib


    scans = tmp_path / "scans"
    scans.mkdir()
    save_phantom(make_phantom(3.0), scans / "head.nii.gz", tmp_path / "head.labels.nii.gz")
    nib.save(nib.load(tmp_path / "head.labels.nii.gz"), scans / "head.labels.nii")
    assert [scan.path.name for scan in find_scans(scans)] == ["head.nii.gz"]
    result = evaluate_folder(scans, tmp_path / "eval", labels_dir=scans, reference_dir=scans)
    assert [record["name"] for record in result["scans"]] == ["head"]
    assert result["overall"]["errors"] == 0, result["scans"][0].get("error")
    assert result["scans"][0]["dice"] is not None
