"""PS3.15 Annex E Table E.1-1 as data: one :class:`Rule` per attribute.

The table lives in ``annex_e_2024b.tsv`` beside this module (edition **2024b**, 619
attributes plus the repeating-group rows; see :mod:`defacer.phi._build_table` for its
sources).  Private attributes (odd groups), which the standard covers with a single
"(gggg,eeee) where gggg is odd" row, are handled by :mod:`defacer.phi.scrub`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

#: Edition of DICOM PS3.15 the table comes from.
EDITION = "2024b"
#: Action codes of Table E.1-1 (PS3.15 Table E.1-1a), compound ones included.
ACTION_CODES = frozenset({"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})
#: Option columns of Table E.1-1, in the table's order.
OPTION_COLUMNS = (
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_long_full_dates",
    "retain_long_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
)
_TABLE_FILE = "annex_e_2024b.tsv"


@dataclass(frozen=True)
class Rule:
    """One row of Table E.1-1.

    Parameters
    ----------
    tag : str
        Tag as printed in the standard, e.g. ``"(0010,0010)"`` or ``"(50XX,XXXX)"``.
    name : str
        Attribute name.
    basic : str
        Action of the Basic Profile (one of :data:`ACTION_CODES`).
    options : dict of str to str
        Non-empty option cells, keyed by :data:`OPTION_COLUMNS` names.
    option_source : str
        ``"2020"`` when the option cells come from the 2020 table, ``"inferred"`` when they
        follow the standard's pattern for attributes added later.
    """

    tag: str
    name: str
    basic: str
    options: dict[str, str]
    option_source: str

    @property
    def value(self) -> int | None:
        """The tag as ``0xGGGGEEEE``, or None for a repeating-group row."""
        if "X" in self.tag:
            return None
        return int(self.tag[1:5] + self.tag[6:10], 16)

    @property
    def mask(self) -> tuple[int, int]:
        """``(mask, value)`` such that ``tag & mask == value`` matches this row."""
        digits = self.tag[1:5] + self.tag[6:10]
        mask = int("".join("0" if c == "X" else "F" for c in digits), 16)
        value = int("".join("0" if c == "X" else c for c in digits), 16)
        return mask, value


@functools.cache
def load_rules() -> tuple[Rule, ...]:
    """Read the whole table (cached). Rows are in tag order."""
    text = resources.files("defacer.phi").joinpath(_TABLE_FILE).read_text(encoding="utf-8")
    rules = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        cells = line.split("\t")
        if header is None:
            header = cells
            continue
        row = dict(zip(header, cells, strict=True))
        options = {name: row[name] for name in OPTION_COLUMNS if row[name]}
        rules.append(Rule(row["tag"], row["name"], row["basic_profile"], options, row["option_source"]))
    return tuple(rules)


@functools.cache
def rule_index() -> tuple[dict[int, Rule], tuple[tuple[int, int, Rule], ...]]:
    """Rules keyed by exact tag value, and the repeating-group rules as ``(mask, value, rule)``."""
    exact: dict[int, Rule] = {}
    masked = []
    for rule in load_rules():
        value = rule.value
        if value is None:
            mask, masked_value = rule.mask
            masked.append((mask, masked_value, rule))
        else:
            exact[value] = rule
    return exact, tuple(masked)


def find_rule(tag: int) -> Rule | None:
    """The rule for a tag value ``0xGGGGEEEE``, or None when the table does not list it."""
    exact, masked = rule_index()
    rule = exact.get(tag)
    if rule is not None:
        return rule
    group = tag >> 16
    if 0x5000 <= group <= 0x60FF:
        for mask, value, candidate in masked:
            if tag & mask == value:
                return candidate
    return None
