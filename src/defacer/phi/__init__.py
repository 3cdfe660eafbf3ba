"""DICOM header de-identification following DICOM PS3.15 Annex E.

:mod:`~defacer.phi.rules` holds Table E.1-1 as data, :mod:`~defacer.phi.options` the
profile's options, :mod:`~defacer.phi.pseudonym` the keyed replacement values,
:mod:`~defacer.phi.actions` what each action code does to one element,
:mod:`~defacer.phi.scrub` applies all of it to a dataset, and :mod:`~defacer.phi.describe`
explains it (``--what-if``).

The names below are imported on first use: :mod:`defacer.options` reads
:class:`~defacer.phi.options.DeidOptions` for every run, and a NIfTI deface must not pay for
importing pydicom (about 0.1 s), which only :class:`Scrubber` needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from defacer._lazy import lazy_exports

if TYPE_CHECKING:
    from defacer.phi.options import DeidOptions
    from defacer.phi.pseudonym import Pseudonymizer
    from defacer.phi.scrub import Scrubber

__all__ = ["DeidOptions", "Pseudonymizer", "Scrubber"]

#: Where each exported name lives.
_EXPORTS = {"DeidOptions": "defacer.phi.options", "Pseudonymizer": "defacer.phi.pseudonym",
            "Scrubber": "defacer.phi.scrub"}


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
