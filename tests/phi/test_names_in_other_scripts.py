"""Names written in scripts without spaces between words, and names stored as bytes in multi-byte encodings.

A short name part ("Li") is masked only as a word of its own, so that "Lithium" stays; Chinese, Japanese and Korean
write a name run into the next word ("山田太郎様", "王伟医生"), so every 2- and 3-character name in them passed the
masking of kept text (HOSTILE19, main 2401ebd: ``anonymize`` kept SequenceName "山田太郎様" and Manufacturer
"やまだたろう" of a patient named ``Yamada^Tarou=山田^太郎=やまだ^たろう``).  And an element no dictionary knows,
removed when its bytes hold the patient's name, was read as Latin-1 only: the name in UTF-8 or ISO 2022 stayed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement

from defacer.io.dicom_series import anonymize_files
from defacer.phi import DeidOptions, Pseudonymizer, Scrubber

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
from dicom_factory import write_series

KEY = b"scripts-test-key-0123456789abcdef"
JAPANESE = "Yamada^Tarou=山田^太郎=やまだ^たろう"
CHINESE = "Wang^Wei=王^伟"


def _series(folder: Path, charset: str | list[str], name: str, extra: dict[str, object]) -> list[Path]:
    paths = write_series(folder, np.arange(4 * 4 * 2, dtype=np.uint16).reshape(4, 4, 2))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        for keyword, value in extra.items():
            if isinstance(keyword, int):
                ds.add(DataElement(keyword, "UN", value))
            else:
                setattr(ds, keyword, value)
        ds.save_as(path)
    return paths


def _anonymize(folder: Path, out: Path, options: DeidOptions | None = None) -> list[pydicom.Dataset]:
    written, _ = anonymize_files(folder, out, Scrubber(options or DeidOptions(), Pseudonymizer(KEY)))
    assert written
    return [pydicom.dcmread(path) for path in written]


@pytest.mark.parametrize(("name", "kept", "gone"), [
    (JAPANESE, {"SequenceName": "山田太郎様", "Manufacturer": "やまだたろう"}, ("山田", "太郎", "やまだ", "たろう")),
    (CHINESE, {"SequenceName": "王伟医生", "Manufacturer": "王 伟"}, ("王伟", "王 伟")),
], ids=["japanese", "chinese"])
def test_a_name_in_an_unspaced_script_leaves_no_kept_text(tmp_path, name, kept, gone):
    _series(tmp_path / "in", "ISO_IR 192", name, kept)
    for ds in _anonymize(tmp_path / "in", tmp_path / "out"):
        text = f"{ds.SequenceName}|{ds.Manufacturer}"
        assert not any(value in text for value in gone), text
        assert "*" in ds.SequenceName and "*" in ds.Manufacturer


def test_a_name_in_an_unspaced_script_is_cleaned_from_descriptions(tmp_path):
    _series(tmp_path / "in", "ISO_IR 192", JAPANESE,
            {"StudyDescription": "頭部MRI 山田太郎さん", "SeriesDescription": "T1 やまだ"})
    ds = _anonymize(tmp_path / "in", tmp_path / "out", DeidOptions(clean_descriptors=True))[0]
    assert ds.StudyDescription == "頭部MRI *さん" and ds.SeriesDescription == "T1 *"


def test_latin_short_name_parts_still_mask_only_whole_words(tmp_path):
    _series(tmp_path / "in", "ISO_IR 192", "Li^Wu", {"SequenceName": "Lithium Li", "Manufacturer": "Wuhan"})
    ds = _anonymize(tmp_path / "in", tmp_path / "out")[0]
    assert ds.SequenceName == "Lithium *" and ds.Manufacturer == "Wuhan"


@pytest.mark.parametrize(("charset", "encoding"), [
    ("ISO_IR 192", "utf-8"), (["", "ISO 2022 IR 87"], "iso2022_jp"), ("ISO_IR 100", "utf-16-le"),
], ids=["utf8", "iso2022", "utf16"])
def test_an_unknown_element_holding_the_name_in_a_multibyte_encoding_is_removed(tmp_path, charset, encoding):
    name = JAPANESE if encoding != "utf-16-le" else "Quexworth^Zelda"
    held = "山田太郎" if encoding != "utf-16-le" else "Quexworth"
    paths = _series(tmp_path / "in", charset, name,
                    {0x0018ABCD: f"by {held}".encode(encoding), 0x0018ABCE: "nothing".encode(encoding)})
    assert held.encode(encoding) in paths[0].read_bytes()
    for ds in _anonymize(tmp_path / "in", tmp_path / "out"):
        assert 0x0018ABCD not in ds
        assert 0x0018ABCE in ds  # bytes holding no name stay, as before
