"""Keyed pseudonyms: deterministic per key, different across keys, valid DICOM values."""

from __future__ import annotations

import os
import re

import pytest

from defacer.errors import DefacerError
from defacer.phi.pseudonym import DATE_SHIFT_RANGE, Pseudonymizer, load_key

KEY = b"0123456789abcdef0123456789abcdef"


def test_same_key_and_uid_give_the_same_new_uid_in_separate_instances():
    assert Pseudonymizer(KEY).uid("1.2.3.4") == Pseudonymizer(bytes(KEY)).uid("1.2.3.4")


def test_different_keys_or_uids_give_different_new_uids():
    p = Pseudonymizer(KEY)
    assert p.uid("1.2.3.4") != p.uid("1.2.3.5")
    assert p.uid("1.2.3.4") != Pseudonymizer(KEY[::-1]).uid("1.2.3.4")


def test_new_uids_are_valid_dicom_uids():
    uid = Pseudonymizer(KEY).uid("1.2.840.113619.2.55.3.604688119.969.1268071029.320")
    assert len(uid) <= 64
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid)


def test_padding_of_the_original_uid_does_not_change_the_result():
    p = Pseudonymizer(KEY)
    assert p.uid("1.2.3\x00") == p.uid("1.2.3")


def test_date_offsets_are_per_patient_and_in_range():
    p = Pseudonymizer(KEY)
    offsets = {p.date_offset_days(f"patient{i}") for i in range(50)}
    assert len(offsets) > 40
    assert all(DATE_SHIFT_RANGE[0] <= o <= DATE_SHIFT_RANGE[1] for o in offsets)
    assert p.date_offset_days("patient1") == Pseudonymizer(KEY).date_offset_days("patient1")


def test_identifiers_are_short_and_upper_case():
    value = Pseudonymizer(KEY).identifier("MRN123")
    assert re.fullmatch(r"DF[A-Z2-7]{12}", value)


def test_short_keys_are_refused_with_advice(tmp_path):
    with pytest.raises(ValueError, match="at least 16"):
        Pseudonymizer(b"short")
    with pytest.raises(DefacerError, match="at least 16"):
        load_key("short")
    (tmp_path / "k").write_text("tiny\n")
    with pytest.raises(DefacerError, match="secrets.token_hex"):
        load_key(key_file=tmp_path / "k")
    with pytest.raises(DefacerError, match="not both"):
        load_key("x" * 20, tmp_path / "k")


def test_key_file_is_read_and_a_missing_key_is_random(tmp_path):
    (tmp_path / "k").write_text("a" * 40 + "\n")
    assert load_key(key_file=tmp_path / "k") == (b"a" * 40, False)
    key, is_random = load_key()
    assert is_random and len(key) == 32


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_key_file_other_users_may_read_is_warned_about(tmp_path, caplog):
    """The de-identification key recomputes every pseudonym and date shift from a list of patients' IDs: a key file
    others can read (the recipe the short-key error gave, '> key.txt' under the usual umask 022, made one 0644)
    lets any user of a shared machine re-identify the data.  It is warned about (HOSTILE12), as 'serve' refuses
    such a token file; one that only its owner may read is not."""
    import logging
    import stat

    key_file = tmp_path / "key.txt"
    key_file.write_text("0123456789abcdef0123456789abcdef\n")
    for mode, warned in ((0o644, True), (0o640, True), (0o606, True), (0o600, False), (0o400, False)):
        key_file.chmod(mode)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            key, random = load_key(key_file=key_file)
        assert key == b"0123456789abcdef0123456789abcdef" and not random
        messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert bool(messages) == warned, (oct(mode), messages)  # main: never warned
        if warned:
            assert f"{stat.S_IMODE(mode):04o}" in messages[0] and "chmod 600" in messages[0]
    # the advice for a short key makes a file only its owner may read
    key_file.write_text("short")
    with pytest.raises(DefacerError, match="umask 077"):
        load_key(key_file=key_file)


def test_a_key_on_the_command_line_is_warned_about(tmp_path, caplog):
    """HOSTILE14: '--key SECRET' sits in the process list (ps, /proc/PID/cmdline) of every user of the machine for the
    whole run (hours for a batch) and in the shell history; with it and a list of patients' IDs anyone recomputes the
    pseudonyms and date shifts.  'serve --token' warns so; '--key' now does too, pointing to --key-file."""
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
    from dicom_factory import write_series

    from defacer.cli.main import main

    series = tmp_path / "in"
    write_series(series, np.arange(8 * 8 * 3, dtype=np.int16).reshape(8, 8, 3))
    key_file = tmp_path / "key.txt"
    key_file.write_text("0123456789abcdef0123456789abcdef\n")
    key_file.chmod(0o600)
    assert main(["anonymize", str(series), str(tmp_path / "a"), "--key", "0123456789abcdef0123456789abcdef"]) == 0
    assert "--key is visible to every user" in caplog.text and "--key-file" in caplog.text
    caplog.clear()
    assert main(["anonymize", str(series), str(tmp_path / "b"), "--key-file", str(key_file)]) == 0
    assert "visible to every user" not in caplog.text
    # the same pseudonyms either way: only the warning differs
    assert sorted(p.name for p in (tmp_path / "a").rglob("*.dcm")) == sorted(p.name for p in (tmp_path / "b").rglob("*.dcm"))
