"""Verification of defaced scans on the user's own machine (extra ``verify``).

Renders the skin surface before and after (:mod:`~defacer.verify.render`), runs offline face
detectors (:mod:`~defacer.verify.faces`) and an identity embedding (:mod:`~defacer.verify.identity`),
counts changed voxels, and writes a self-contained HTML report and a JSON summary
(:mod:`~defacer.verify.report`).  :func:`verify_pair` does all of it for one scan;
:mod:`defacer.evaluate` does it over a folder.
"""

from defacer.verify.check import VERDICT_RULE, VerifyResult, verify_pair

__all__ = ["VERDICT_RULE", "VerifyResult", "verify_pair"]
