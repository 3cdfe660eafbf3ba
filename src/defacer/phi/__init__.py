"""DICOM header de-identification following DICOM PS3.15 Annex E.

:mod:`~defacer.phi.rules` holds Table E.1-1 as data, :mod:`~defacer.phi.options` the
profile's options, :mod:`~defacer.phi.pseudonym` the keyed replacement values,
:mod:`~defacer.phi.actions` what each action code does to one element,
:mod:`~defacer.phi.scrub` applies all of it to a dataset, and :mod:`~defacer.phi.describe`
explains it (``--what-if``).
"""

from __future__ import annotations

from defacer.phi.options import DeidOptions
from defacer.phi.pseudonym import Pseudonymizer
from defacer.phi.scrub import Scrubber

__all__ = ["DeidOptions", "Pseudonymizer", "Scrubber"]
