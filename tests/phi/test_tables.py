"""BIDS tables (participants.tsv, *_scans.tsv, *_sessions.tsv) de-identified: dates, operators, ages over 89."""

from __future__ import annotations

import pytest

from defacer.phi.tables import clean_table, describe_changes, is_bids_table, is_date_column

HEUDICONV_SCANS = ("filename\tacq_time\toperator\trandstr\r\n"
                   "anat/sub-01_T1w.nii.gz\t2023-03-14T09:12:44.500000\tQuexworth^Jane\t9a8d\r\n"
                   "func/sub-01_task-rest_bold.nii.gz\tn/a\tn/a\tc01e\r\n")


def test_acquisition_times_and_operators_become_missing_and_everything_else_stays() -> None:
    cleaned, changed = clean_table(HEUDICONV_SCANS)
    assert cleaned == ("filename\tacq_time\toperator\trandstr\r\n"
                       "anat/sub-01_T1w.nii.gz\tn/a\tn/a\t9a8d\r\n"
                       "func/sub-01_task-rest_bold.nii.gz\tn/a\tn/a\tc01e\r\n")
    assert changed == {"acq_time": 1, "operator": 1}
    assert describe_changes(changed) == "acq_time (1 row), operator (1 row)"


def test_ages_over_89_are_pooled_and_the_others_kept() -> None:
    text = "participant_id\tage\tsex\nsub-01\t34\tF\nsub-02\t90\tM\nsub-03\t102.5\tF\nsub-04\tn/a\tM\nsub-05\t89\tF\n"
    cleaned, changed = clean_table(text)
    assert cleaned.splitlines()[1:] == ["sub-01\t34\tF", "sub-02\t89+\tM", "sub-03\t89+\tF", "sub-04\tn/a\tM",
                                        "sub-05\t89\tF"]
    assert changed == {"age": 2}


def test_a_table_without_such_columns_is_returned_unchanged_and_short_rows_are_not_padded() -> None:
    text = "onset\tduration\n1\t2\n"
    assert clean_table(text) == (text, {})
    assert clean_table("") == ("", {})
    cleaned, changed = clean_table("filename\tacq_time\nx.nii.gz\n")
    assert cleaned == "filename\tacq_time\nx.nii.gz\n" and changed == {}


@pytest.mark.parametrize("column", ["acq_time", "session_date", "scan_time", "birthdate", "DOB", "date"])
def test_date_columns_are_recognised(column: str) -> None:
    assert is_date_column(column)


@pytest.mark.parametrize("column", ["filename", "runtime_s", "dated_by", "timeline", "age"])
def test_other_columns_are_not(column: str) -> None:
    assert not is_date_column(column)


@pytest.mark.parametrize(("name", "expected"), [("participants.tsv", True), ("sub-01_scans.tsv", True),
                                                ("sub-01_ses-1_scans.tsv", True), ("sub-01_sessions.tsv", True),
                                                ("sub-01_task-rest_events.tsv", False), ("scans.tsv.bak", False),
                                                ("Participants.tsv", True), ("sub-01_scans.TSV", True),
                                                ("sub-01_Sessions.tsv", True)])
def test_which_tables_are_cleaned(name: str, expected: bool) -> None:
    assert is_bids_table(name) is expected


@pytest.mark.parametrize("inside", ["\x85", "\x0c", "\x0b", "\x1c", "\x1e", "\u2028", "\u2029"])
def test_a_character_that_is_no_row_end_inside_a_cell_never_shifts_the_cells_after_it(inside: str) -> None:
    """Found by HOSTILE4: str.splitlines ended a row at a NEL (0x85 read as Latin-1), form feed, U+2028...;
    the rest of the row was read as a new row one column to the left, and the operator's surname was kept."""
    text = f"filename\toperator\tacq_time\nanat/sub-01_T1w.nii.gz\tJane{inside}Quexworth\t2023-03-14T09:12:44\n"
    cleaned, changed = clean_table(text)
    assert cleaned == "filename\toperator\tacq_time\nanat/sub-01_T1w.nii.gz\tn/a\tn/a\n"
    assert changed == {"operator": 1, "acq_time": 1}


def test_rows_ending_in_a_lone_cr_are_rows() -> None:
    cleaned, changed = clean_table("filename\tacq_time\ra.nii.gz\t2023-03-14\rb.nii.gz\t2023-03-15")
    assert cleaned == "filename\tacq_time\ra.nii.gz\tn/a\rb.nii.gz\tn/a" and changed == {"acq_time": 2}


@pytest.mark.parametrize("column", ["AcquisitionDateTime", "Acq Time", " acq-time ", "StudyDate", "date of birth",
                                    "PatientBirthDate", "\ufeffacq_time", "SCAN_DATE"])
def test_date_columns_are_recognised_in_any_spelling(column: str) -> None:
    """Found by HOSTILE4: only acq_time-like snake_case names (any case, spaces around) were recognised; a table
    exported by hand or with DICOM keywords as column names kept the full acquisition dates."""
    cleaned, changed = clean_table(f"filename\t{column}\nanat/sub-01_T1w.nii.gz\t2023-03-14T09:12:44\n")
    assert cleaned.splitlines()[1] == "anat/sub-01_T1w.nii.gz\tn/a" and changed == {column: 1}


@pytest.mark.parametrize("column", ["OperatorsName", "Operator", "PatientName", "PatientID",
                                    "ReferringPhysicianName", "\ufeffoperator", "Patient Name"])
def test_person_columns_are_recognised_in_any_spelling(column: str) -> None:
    cleaned, _ = clean_table(f"{column}\tfilename\nQuexworth^Jane\tanat/sub-01_T1w.nii.gz\n")
    assert "Quexworth" not in cleaned


@pytest.mark.parametrize("column", ["Age", "\ufeffage", "age_at_scan", "PatientAge", "Age (years)", "subject-age"])
@pytest.mark.parametrize("value", ["95", "095Y", "95 years", "95,5", "95.5y"])
def test_ages_over_89_are_pooled_in_any_spelling(column: str, value: str) -> None:
    """Found by HOSTILE4: only a column named 'age' holding a plain number was pooled; a DICOM age string (095Y),
    '95 years' or a column 'age_at_scan' reached OUT as it was."""
    cleaned, changed = clean_table(f"{column}\tparticipant_id\n{value}\tsub-01\n45Y\tsub-02\n")
    assert cleaned.splitlines()[1:] == ["89+\tsub-01", "45Y\tsub-02"] and changed == {column: 1}


@pytest.mark.parametrize("column", ["stage", "page", "image_count", "runtime_s", "sequence_name", "timeline"])
def test_look_alike_columns_are_kept(column: str) -> None:
    text = f"{column}\tfilename\n95\tanat/sub-01_T1w.nii.gz\n"
    assert clean_table(text) == (text, {})


@pytest.mark.parametrize(("row", "expected"), [
    ('f.nii\t"Jane\tQuexworth"\t2023-03-14', "f.nii\tn/a\tn/a"),  # BIDS quotes a value holding a tab
    ('f.nii\t"Jane\nQuexworth"\t2023-03-14', "f.nii\tn/a\tn/a"),  # ... or a line break (as pandas reads it)
    ('"f\t2023-03-14"\tn/a\tn/a', "n/a\tn/a\tn/a"),  # split at the tab, its second part is read as the operator
    ('"f\n2023-03-14\tJane"\tn/a\tn/a', "n/a\tn/a\tn/a"),
    ('"f ""1"".nii"\tJane\t2023-03-14', '"f ""1"".nii"\tn/a\tn/a'),  # quoted, nothing to clean: kept as written
])
def test_quoted_cells_never_hide_a_date_or_a_name_from_either_reading(row: str, expected: str) -> None:
    """Found by HOSTILE4: rows were split at every tab, while BIDS (and pandas) read a double-quoted value holding a
    tab as one cell: 'f.nii<TAB>"Jane<TAB>Quexworth"<TAB>2023-03-14' kept the date as a fourth cell, which those
    readers take for acq_time; a quoted line break kept the surname as the next row's file name."""
    cleaned, _ = clean_table(f"filename\toperator\tacq_time\n{row}\n")
    assert cleaned == f"filename\toperator\tacq_time\n{expected}\n"


def test_a_quoted_age_or_column_name_is_read_without_its_quotes() -> None:
    assert clean_table('participant_id\t"age"\nsub-01\t"95"\n')[0] == 'participant_id\t"age"\nsub-01\t89+\n'


@pytest.mark.parametrize("body", ['"open\t2023\nb\t2024\n', 'a\t"b""c"\t\r\nd\t\t', '\n\n', '"', 'x\t"', '\t'])
def test_a_table_without_columns_to_clean_comes_back_as_it_was(body: str) -> None:
    text = "filename\tnote\n" + body
    assert clean_table(text) == (text, {})


def test_a_quote_that_never_closes_is_a_character_and_hides_no_later_row() -> None:
    cleaned, changed = clean_table('filename\tacq_time\n"unclosed\t2023-03-14\nb\t2023-03-15\n')
    assert cleaned == 'filename\tacq_time\n"unclosed\tn/a\nb\tn/a\n' and changed == {"acq_time": 2}


@pytest.mark.parametrize(("column", "young", "old", "pooled"), [
    ("age_months", "100", "1100", "1068+"), ("AgeInDays", "400", "33000", "32507+"), ("age_weeks", "95", "4700", "4643+"),
])
def test_an_age_kept_in_another_unit_is_compared_in_years(column: str, young: str, old: str, pooled: str) -> None:
    """An infant's 'age_months' of 100 is no age over 89 (found by HOSTILE4 checking its own 3f080e9, which took
    every column with the word 'age' for years)."""
    cleaned, _ = clean_table(f"participant_id\t{column}\nsub-01\t{young}\nsub-02\t{old}\n")
    assert cleaned.splitlines()[1:] == [f"sub-01\t{young}", f"sub-02\t{pooled}"]


def test_the_profiles_retain_options_keep_dates_and_ages_as_a_header_keeps_them_but_never_a_person() -> None:
    """--retain-long-full-dates kept the dates in headers and sidecars and --retain-patient-characteristics the age,
    while the tables lost both whatever the options (HOSTILE4's open question 11)."""
    text = "participant_id\tage\tacq_time\toperator\nsub-01\t93\t2023-03-14T09:12:44\tQuexworth^Jane\n"
    kept_dates, changed = clean_table(text, keep_dates=True)
    assert kept_dates.splitlines()[1] == "sub-01\t89+\t2023-03-14T09:12:44\tn/a" and set(changed) == {"age", "operator"}
    kept_ages, changed = clean_table(text, keep_ages=True)
    assert kept_ages.splitlines()[1] == "sub-01\t93\tn/a\tn/a" and set(changed) == {"acq_time", "operator"}
    assert clean_table(text, keep_dates=True, keep_ages=True)[0].splitlines()[1] == "sub-01\t93\t2023-03-14T09:12:44\tn/a"


def test_a_column_of_dates_is_cleaned_whatever_its_name_and_a_column_of_versions_is_not() -> None:
    """A 'visit' column of ISO dates (or dates by hand) was kept: only columns named as dates were cleaned
    (HOSTILE4's open question 3)."""
    text = ("participant_id\tvisit\tconsent\tprotocol\tscore\n"
            "sub-01\t2023-03-14\t14/03/2023\t1.12.10\t3\n"
            "sub-02\tn/a\t3/1/23\t1.12.11\t4\n")
    cleaned, changed = clean_table(text)
    assert cleaned.splitlines()[1:] == ["sub-01\tn/a\tn/a\t1.12.10\t3", "sub-02\tn/a\tn/a\t1.12.11\t4"]
    assert changed == {"visit": 1, "consent": 2}
    assert clean_table(text, keep_dates=True) == (text, {})


def test_phenotype_tables_are_cleaned_too() -> None:
    assert is_bids_table("moca.tsv", "phenotype") and is_bids_table("MoCA.TSV", "Phenotype")
    assert not is_bids_table("moca.tsv", "code") and not is_bids_table("moca.json", "phenotype")
