"""The Annex E table as data, and how options pick an action."""

from __future__ import annotations

import pytest
from pydicom.datadict import tag_for_keyword

from defacer.phi.options import DeidOptions
from defacer.phi.rules import ACTION_CODES, EDITION, find_rule, load_rules

#: The 20 header attributes the paper (Jeong et al. 2020) lists, plus the 3 more its code blanks.
PAPER_TAGS = [
    0x00080012, 0x00080013, 0x00080020, 0x00080030, 0x00080021, 0x00080031, 0x00080022, 0x00080032, 0x00080023,
    0x00080033, 0x00080080, 0x00080081, 0x00080090, 0x00081050, 0x00081070, 0x00100010, 0x00100020, 0x00100030,
    0x00100040, 0x00101010,
]
PAPER_CODE_EXTRA = [0x00080050, 0x00081010, 0x00081040, 0x00204000]


def test_table_is_the_whole_2024b_basic_profile():
    rules = load_rules()
    assert EDITION == "2024b"
    assert len(rules) >= 615
    assert {rule.basic for rule in rules} <= ACTION_CODES
    assert {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"} <= {rule.basic for rule in rules}
    assert len({rule.tag for rule in rules}) == len(rules)


@pytest.mark.parametrize("tag", PAPER_TAGS + PAPER_CODE_EXTRA)
def test_every_attribute_the_paper_blanks_is_in_the_table_and_not_kept(tag):
    rule = find_rule(tag)
    assert rule is not None
    assert DeidOptions().action_for(rule) != "K"


def test_repeating_groups_match_curves_and_overlays():
    assert find_rule(0x50023000).name == "Curve Data"
    assert find_rule(0x60024000).name == "Overlay Comments"
    assert find_rule(0x00291010) is None


def test_options_override_the_basic_profile():
    study_date = find_rule(tag_for_keyword("StudyDate"))
    assert DeidOptions().action_for(study_date) == study_date.basic
    assert DeidOptions(retain_long_full_dates=True).action_for(study_date) == "K"
    assert DeidOptions(retain_long_modified_dates=True).action_for(study_date) == "C"
    study_uid = find_rule(tag_for_keyword("StudyInstanceUID"))
    assert DeidOptions().action_for(study_uid) == "U"
    assert DeidOptions(retain_uids=True).action_for(study_uid) == "K"
    serial = find_rule(tag_for_keyword("DeviceSerialNumber"))
    assert DeidOptions(retain_device_identity=True).action_for(serial) == "K"
    description = find_rule(tag_for_keyword("StudyDescription"))
    assert DeidOptions(clean_descriptors=True).action_for(description) == "C"


def test_full_and_shifted_dates_cannot_both_be_retained():
    with pytest.raises(ValueError, match="not both"):
        DeidOptions(retain_long_full_dates=True, retain_long_modified_dates=True)


def test_method_codes_name_the_profile_and_options_in_force():
    codes = [code for code, _ in DeidOptions(retain_uids=True, clean_recognizable_visual_features=True).method_codes()]
    assert codes == ["113100", "113102", "113110"]
