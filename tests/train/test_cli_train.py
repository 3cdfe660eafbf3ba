"""``defacer train`` on the command line: help, clear errors, and the ensemble export."""

from __future__ import annotations

import pytest

from defacer.cli.main import main

pytest.importorskip("torch")
pytest.importorskip("monai")


def test_train_help_lists_the_main_options(capsys) -> None:
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--labels-dir", "--export", "--holdout", "--ensemble", "--time-limit"):
        assert option in out


def test_train_without_label_provenance_fails_with_a_clear_message(tmp_path, capsys) -> None:
    code = main(["train", "--data", str(tmp_path), "--labels-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code != 0
    assert "provenance.json" in capsys.readouterr().err


def test_ensemble_needs_an_export_path(tmp_path, capsys) -> None:
    code = main(["train", "--ensemble", str(tmp_path / "a.pt"), "--data", str(tmp_path), "--labels-dir",
                 str(tmp_path), "--out", str(tmp_path / "o")])
    assert code != 0
    assert "--export" in capsys.readouterr().err


def test_train_from_a_box_cache_exports_a_model_on_the_cached_box(tmp_path, capsys) -> None:
    import json

    from defacer.detect.model import OnnxDetector
    from defacer.train.data import make_phantom_samples, save_samples

    cache = tmp_path / "boxes.npz"
    save_samples(make_phantom_samples(2, seed=3, shape=(32, 32, 32), spacing=8.0), cache)
    out = tmp_path / "model.onnx"
    code = main(["train", "--cache", str(cache), "--phantoms", "0", "--validate-on-train", "--epochs", "1",
                 "--samples-per-epoch", "2", "--batch-size", "1", "--channels", "4,8,16", "--out", str(tmp_path / "run"),
                 "--export", str(out)])
    assert code == 0, capsys.readouterr().err
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["box"]["shape"] == [32, 32, 32] and card["box"]["spacing_mm"] == 8.0
    assert OnnxDetector(out).box_shape == (32, 32, 32)
    assert card["class_weights"] == [1.0, 1.0, 1.0, 3.0]
    # as the shipped model runs: no mirrored pass (a card without the entry turned it on, doubling the network's time
    # and scoring held-out folds otherwise than the shipped model runs)
    assert card["mirror"] is False and OnnxDetector(out).mirror is False


def test_train_without_data_or_cache_says_what_is_missing(tmp_path, capsys) -> None:
    code = main(["train", "--out", str(tmp_path / "o")])
    assert code != 0
    err = capsys.readouterr().err
    assert "--data" in err and "--cache" in err


def test_bad_class_weights_are_refused_before_training(tmp_path, capsys) -> None:
    code = main(["train", "--out", str(tmp_path / "o"), "--class-weights", "1,1,3"])
    assert code != 0
    assert "four positive numbers" in capsys.readouterr().err


class _Hostile:
    """A pickled object that runs code when unpickled (what a full torch.load would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_is_read_without_running_code_in_it(tmp_path, capsys) -> None:
    """Checkpoints were read with torch.load(weights_only=False): a hostile file ran code, and a file that was
    no checkpoint stopped with 'UnpicklingError ... a bug in defacer'."""
    import torch

    marker = tmp_path / "ran"
    hostile = tmp_path / "best.pt"
    torch.save({"model": _Hostile(str(marker)), "unet": {}}, hostile)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    for checkpoint in (hostile, junk):
        argv = ["train", "--out", str(tmp_path / "out"), "--ensemble", str(checkpoint), "--export",
                str(tmp_path / "x.onnx")]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "is not a checkpoint written by 'defacer train'" in err and "bug" not in err
        assert not marker.exists()
    assert not (tmp_path / "x.onnx").exists()


def test_resuming_reads_the_checkpoint_without_running_code_in_it(tmp_path) -> None:
    import torch

    from defacer.errors import DefacerError
    from defacer.train.data import make_phantom_samples
    from defacer.train.loop import TrainConfig, train
    from defacer.train.unet import UNetConfig

    marker = tmp_path / "ran"
    hostile = tmp_path / "last.pt"
    torch.save({"model": _Hostile(str(marker)), "unet": {}}, hostile)
    samples = make_phantom_samples(2, seed=1, shape=(32, 32, 32), spacing=8.0)
    config = TrainConfig(epochs=1, samples_per_epoch=1, batch_size=1, threads=1,
                         unet=UNetConfig(channels=(2, 4, 8)).to_dict())
    with pytest.raises(DefacerError, match="not a checkpoint"):
        train(samples[:1], samples[1:], tmp_path / "out", config, resume=hostile)
    assert not marker.exists()


@pytest.mark.parametrize("option, value", [("--epochs", "-1"), ("--lr", "nan"), ("--batch-size", "0"),
                                           ("--channels", "8,x"), ("--threads", "-1"), ("--time-limit", "-5"),
                                           ("--foreground-probability", "2"), ("--phantoms", "-2"),
                                           ("--class-weights", "1,1,1,inf"), ("--patience", "0")])
def test_numbers_no_training_can_run_with_are_refused_before_any_data_is_read(tmp_path, capsys, option, value) -> None:
    """They were passed on unchecked: '--channels 8,x' stopped with 'unexpected error: ValueError', and the
    others failed (or trained nonsense) only after the data had been read."""
    assert main(["train", "--out", str(tmp_path / "out"), option, value, "--data", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert option in err and value in err and "bug" not in err
    assert "--data DIR" not in err  # refused before looking for the data
    assert not (tmp_path / "out").exists()


def _odd_npz(path) -> None:
    import numpy as np

    np.savez(path, a=np.zeros(3))


@pytest.mark.parametrize("case", ["junk cache", "other npz as cache", "junk onnx to resume", "provenance array",
                                  "provenance not json", "provenance without source"])
def test_a_bad_training_input_is_refused_in_words_and_nothing_is_left(tmp_path, capsys, case) -> None:
    """Each stopped with 'unexpected error ... a bug in defacer' (ValueError, KeyError, DecodeError), and the
    junk ONNX left an empty --out folder behind."""
    out = tmp_path / "out"
    labels = tmp_path / "labels"
    labels.mkdir()
    argv = ["train", "--out", str(out), "--epochs", "1", "--samples-per-epoch", "1", "--phantoms", "0",
            "--validate-on-train"]
    if case == "junk cache":
        (tmp_path / "c.npz").write_bytes(b"junk")
        argv += ["--cache", str(tmp_path / "c.npz")]
        expected = "is not a box cache"
    elif case == "other npz as cache":
        _odd_npz(tmp_path / "c.npz")
        argv += ["--cache", str(tmp_path / "c.npz")]
        expected = "is not a box cache"
    elif case == "junk onnx to resume":
        from defacer.train.data import make_phantom_samples, save_samples

        save_samples(make_phantom_samples(1, seed=1, shape=(32, 32, 32), spacing=8.0), tmp_path / "c.npz")
        (tmp_path / "w.onnx").write_bytes(b"junk")
        argv += ["--cache", str(tmp_path / "c.npz"), "--resume", str(tmp_path / "w.onnx"), "--channels", "2,4,8"]
        expected = "could not be read as an ONNX model"
    else:
        text = {"provenance array": "[1, 2]", "provenance not json": "{bad",
                "provenance without source": '{"a": 3}'}[case]
        (labels / "provenance.json").write_text(text)
        argv += ["--data", str(tmp_path), "--labels-dir", str(labels)]
        expected = "provenance"
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert expected in err and "bug" not in err
    assert not out.exists()


@pytest.mark.parametrize("options, words", [
    (["--box-size", "90"], "--box-size expects a positive multiple of 8"),
    (["--box-size", "0"], "--box-size expects a positive multiple of 8"),
    (["--box-size", "1024"], "up to 256"),  # a 1024 box asked for tens of GB before anything said so
    (["--box-spacing", "0.1"], "found 96 and 0.1"),
    (["--box-size", "48", "--patch", "64"], "--patch 64 is larger than the box (48 voxels per axis)"),
])
def test_a_box_no_network_can_take_is_refused_before_any_data_is_read(tmp_path, capsys, options, words) -> None:
    assert main(["train", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "none"), *options]) == 1
    err = capsys.readouterr().err
    assert words in err and "bug" not in err and "--data DIR" not in err
    assert not (tmp_path / "out").exists()


def test_a_cache_on_another_box_than_asked_is_refused_in_words(tmp_path, capsys) -> None:
    from defacer.train.data import make_phantom_samples, save_samples

    cache = tmp_path / "boxes.npz"
    save_samples(make_phantom_samples(2, seed=3, shape=(32, 32, 32), spacing=8.0), cache)
    code = main(["train", "--cache", str(cache), "--box-size", "40", "--box-spacing", "6", "--phantoms", "0",
                 "--epochs", "1", "--channels", "4,8,16", "--out", str(tmp_path / "run")])
    assert code == 1
    err = capsys.readouterr().err
    assert "32-voxel box at 8 mm" in err and "--box-size 40" in err and "bug" not in err


def test_phantoms_are_drawn_on_the_cached_heads_box_and_the_card_records_it(tmp_path, capsys) -> None:
    """Phantoms were made on the package's 96-voxel box whatever the cache held, so a cache on another box could
    not be trained on with phantoms added."""
    import json

    from defacer.train.data import make_phantom_samples, save_samples

    cache = tmp_path / "boxes.npz"
    save_samples(make_phantom_samples(2, seed=3, shape=(32, 32, 32), spacing=7.5), cache)
    out = tmp_path / "model.onnx"
    code = main(["train", "--cache", str(cache), "--box-size", "32", "--box-spacing", "7.5", "--phantoms", "1",
                 "--validate-on-train", "--epochs", "1", "--samples-per-epoch", "2", "--batch-size", "1",
                 "--channels", "4,8,16", "--out", str(tmp_path / "run"), "--export", str(out)])
    assert code == 0, capsys.readouterr().err
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["box"]["shape"] == [32, 32, 32] and card["box"]["spacing_mm"] == 7.5


@pytest.mark.parametrize("card", ["not json", "[1]", '{"trained_on": 5}', '{"trained_on": [1]}'])
def test_a_damaged_card_beside_an_ensemble_member_is_refused_in_words(tmp_path, capsys, card) -> None:
    """Found by HOSTILE4: the detector.json beside a checkpoint given to --ensemble was read with json.loads as it
    was; such a card stopped the export with 'unexpected error: JSONDecodeError/AttributeError/TypeError ... a bug'."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "best.pt").write_bytes(b"")
    (tmp_path / "m" / "detector.json").write_text(card)
    argv = ["train", "--out", str(tmp_path / "out"), "--ensemble", str(tmp_path / "m" / "best.pt"), "--export",
            str(tmp_path / "x.onnx")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "model card" in err and "bug" not in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("case, words", [
    ("a 7 for the ears", "holds values from 0 to 7"),
    ("257 for the background", "holds values from 1 to 257"),  # cast to uint8 it was 1: eyes everywhere
    ("halves", "non-integer values"),  # cast: the nose (2 x 0.5) became eyes, the eyes background
    ("shifted 20 mm", "on another grid than the scan"),
    ("other voxel order", "on another grid than the scan"),
])
def test_a_reference_label_map_that_is_no_feature_map_of_its_scan_is_refused(tmp_path, capsys, case, words) -> None:
    """Reference labels were cast to uint8 whatever they held, and a map of the same shape on another grid was
    used as given: the cache (and the network) learnt wrong classes or wrong voxels without a word."""
    import json

    import nibabel as nib
    import numpy as np

    from defacer.phantom import make_phantom, save_phantom

    data, labels_dir = tmp_path / "data", tmp_path / "labels"
    data.mkdir()
    labels_dir.mkdir()
    save_phantom(make_phantom(6.0), data / "h.nii.gz", tmp_path / "h.labels.nii.gz")
    good = nib.load(str(tmp_path / "h.labels.nii.gz"))
    values = np.asarray(good.dataobj).astype(np.int16)
    affine = good.affine.copy()
    if case == "a 7 for the ears":
        values = np.where(values == 3, 7, values)
    elif case == "257 for the background":
        values = np.where(values == 0, 257, values)
    elif case == "halves":
        values = values.astype(np.float32) * 0.5
    elif case == "shifted 20 mm":
        affine[:3, 3] += 20
    else:  # same shape needs a cube: the phantom's own shape is not, so flip the first axis in the affine only
        affine[:, 0] *= -1
    nib.save(nib.Nifti1Image(values, affine), str(labels_dir / "h.labels.nii.gz"))
    (labels_dir / "provenance.json").write_text(json.dumps({"h": {"source": "h.nii.gz"}}))
    cache, out = tmp_path / "c.npz", tmp_path / "out"
    assert main(["train", "--data", str(data), "--labels-dir", str(labels_dir), "--cache", str(cache), "--out",
                 str(out), "--epochs", "0", "--phantoms", "0"]) == 1
    err = capsys.readouterr().err
    assert words in err and "bug" not in err
    assert not cache.exists()


def test_a_cache_holding_labels_no_class_stands_for_is_refused(tmp_path, capsys) -> None:
    import numpy as np

    from defacer.train.data import make_phantom_samples, save_samples

    sample = make_phantom_samples(1, seed=1, shape=(32, 32, 32), spacing=8.0)[0]
    sample.labels[sample.labels == 3] = 9
    save_samples([sample], tmp_path / "c.npz")
    assert main(["train", "--cache", str(tmp_path / "c.npz"), "--out", str(tmp_path / "out"), "--epochs", "1",
                 "--samples-per-epoch", "1", "--phantoms", "0", "--validate-on-train", "--box-size", "32",
                 "--box-spacing", "8", "--channels", "2,4,8"]) == 1
    err = capsys.readouterr().err
    assert "are not the integers 0-3" in err and "bug" not in err
    assert np.load(tmp_path / "c.npz")["labels0"].max() == 9  # the input is not touched


@pytest.mark.parametrize("where", ["labels", "data"])
def test_no_output_is_written_inside_the_folders_training_reads(tmp_path, capsys, where) -> None:
    """Found by HOSTILE14: --data and --labels-dir were no inputs of the output check, so with --force
    '--export LABELS/provenance.onnx' would write its card over LABELS/provenance.json (and checkpoints could
    replace files under --data).  Refused before anything is read or written."""
    data, labels = tmp_path / "data", tmp_path / "labels"
    data.mkdir()
    labels.mkdir()
    provenance = labels / "provenance.json"
    provenance.write_text('{"head": {"source": "head.nii.gz"}}')
    scan = data / "best.pt"
    scan.write_bytes(b"a file of the data set")
    target = {"labels": ["--out", str(tmp_path / "run"), "--export", str(labels / "provenance.onnx")],
              "data": ["--out", str(data)]}[where]
    argv = ["train", "--data", str(data), "--labels-dir", str(labels), "--force", *target]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert ("inside --labels-dir" if where == "labels" else "inside --data") in err and "bug" not in err
    assert "replace" in err
    assert provenance.read_text() == '{"head": {"source": "head.nii.gz"}}'
    assert scan.read_bytes() == b"a file of the data set"
    assert sorted(p.name for p in labels.iterdir()) == ["provenance.json"]


@pytest.mark.parametrize("taken", ["model", "card"])
def test_an_export_path_taken_while_training_is_never_replaced_without_force(tmp_path, capsys, monkeypatch,
                                                                            taken) -> None:
    """HOSTILE15: --export was checked before training (hours) and written at the end with a plain rename, its card
    with a plain write: a model (or card) put there meanwhile (a second run exporting to the same path) was replaced
    without --force, exit 0.  Now both are renamed into place together, neither onto a taken name: exit 1, the other
    run's file kept, nothing of this run's export left."""
    from defacer.train import export
    from defacer.train.data import make_phantom_samples, save_samples

    cache = tmp_path / "boxes.npz"
    save_samples(make_phantom_samples(2, seed=3, shape=(32, 32, 32), spacing=8.0), cache)
    out = tmp_path / "model.onnx"
    other = out if taken == "model" else out.with_suffix(".json")
    original = export.export_onnx

    def another_run_exports_first(*args, **kwargs):  # its model lands while this run trains
        other.write_text("another run's export")
        return original(*args, **kwargs)

    monkeypatch.setattr(export, "export_onnx", another_run_exports_first)
    code = main(["train", "--cache", str(cache), "--phantoms", "0", "--validate-on-train", "--epochs", "1",
                 "--samples-per-epoch", "2", "--batch-size", "1", "--channels", "4,8,16", "--out", str(tmp_path / "run"),
                 "--export", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "appeared while defacer was writing" in err and "Traceback" not in err, err
    assert other.read_text() == "another run's export"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["boxes.npz", "run", other.name])


def test_a_second_training_run_into_the_same_out_is_refused_while_the_first_runs(tmp_path, capsys) -> None:
    """HOSTILE15: two runs started into one --out (a sweep repeating a name, a run started again with --force while
    the first trained) both passed the output check and wrote best.pt, last.pt and history.json over each other's
    every epoch.  The folder is now locked while a run trains (flock on the folder, nothing added to it): the second
    is refused in words before training, and writes nothing."""
    import fcntl
    import os

    from defacer.train.data import make_phantom_samples, save_samples

    cache = tmp_path / "boxes.npz"
    save_samples(make_phantom_samples(2, seed=3, shape=(32, 32, 32), spacing=8.0), cache)
    out = tmp_path / "run"
    out.mkdir()
    first = os.open(out, os.O_RDONLY)  # the first run, training
    try:
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code = main(["train", "--cache", str(cache), "--phantoms", "0", "--validate-on-train", "--epochs", "1",
                     "--samples-per-epoch", "2", "--batch-size", "1", "--channels", "4,8,16", "--out", str(out),
                     "--export", str(tmp_path / "model.onnx"), "--force"])
    finally:
        os.close(first)
    err = capsys.readouterr().err
    assert code == 1 and "Another defacer training run is writing its checkpoints" in err, err
    assert list(out.iterdir()) == [] and not (tmp_path / "model.onnx").exists()
