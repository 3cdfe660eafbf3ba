"""Faked face detectors for the ``--retry-stronger`` tests (command line, batch, web).

The synthetic phantom has no face the real detectors know, so which verdict they give it is their business; these
fakes make the verdict follow the test's plan, so the retry's control flow, outputs and records can be tested.
The ``faces_after`` fixture (``tests/conftest.py``) installs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest


@dataclass
class FakeDetectors:
    """``plan[n]``: whether the n-th verification finds a face after defacing; ``calls``: detector runs."""

    plan: list[bool] = field(default_factory=list)
    calls: int = 0

    @property
    def verifications(self) -> int:
        return self.calls // 2


def install(monkeypatch: pytest.MonkeyPatch) -> FakeDetectors:
    """Replace the face detectors and the identity embedding: a face in every render of the original; after
    defacing as the returned object's ``plan`` says (filled by the test)."""
    from defacer.verify import check, identity
    from defacer.verify.faces import DetectorResult

    fakes = FakeDetectors()

    def fake(renders: dict[str, Any]) -> dict[str, Any]:  # per verification: the original's renders, then the result's
        fakes.calls += 1
        face = True if fakes.calls % 2 else fakes.plan[fakes.calls // 2 - 1]
        return {view: {"stub": DetectorResult("stub", 0.5, 1.0 if face else None, None, face)} for view in renders}

    monkeypatch.setattr(check, "detect_renders", fake)
    monkeypatch.setattr(identity, "embed", lambda image, box: np.zeros(128))
    return fakes
