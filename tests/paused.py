"""Real defacer processes paused at a chosen step, for tests of what happens while a run is under way.

A test starts a real process (a ``defacer batch``, or the workers a Dask cluster spawns) whose ``PYTHONPATH`` begins
with a folder holding a ``sitecustomize.py`` (:func:`pause_at`): while ``$PAUSE_SYNC`` names a folder, the chosen
function touches ``at-<step>`` there when called, then waits until the test touches ``go-<step>`` (or the limit
passes) before it runs.  :func:`wait_for` waits for ``at-<step>``; :func:`phantom_dataset` makes a small BIDS
folder of phantom heads with their label maps to run on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from defacer.phantom import make_phantom, save_phantom

#: The environment variable naming the folder of ``at-<step>`` / ``go-<step>`` files (unset: nothing waits).
SYNC_ENV = "PAUSE_SYNC"

_SITECUSTOMIZE = """
import os
if os.environ.get({env!r}):
    import importlib
    import time
    from pathlib import Path
    owner = importlib.import_module({module!r})
    real = getattr(owner, {name!r})

    def waiting(*args, **kwargs):
        sync = Path(os.environ[{env!r}])
        (sync / {at!r}).touch()
        deadline = time.monotonic() + {limit_s!r}
        while not (sync / {go!r}).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return real(*args, **kwargs)

    setattr(owner, {name!r}, waiting)
"""


@dataclass(frozen=True)
class Pause:
    """Where a paused step meets the test.

    Attributes
    ----------
    sync : Path
        The folder of the step's files (the value of :data:`SYNC_ENV` for the processes that pause).
    pythonpath : str
        ``PYTHONPATH`` for the child processes: the folder of the ``sitecustomize.py``, then this process's path.
    at, go : Path
        The file the step touches when reached, and the one the test touches to let it run.
    """

    sync: Path
    pythonpath: str
    at: Path
    go: Path


def pause_at(root: Path, module: str, name: str, step: str, limit_s: float = 60.0) -> Pause:
    """Make the function ``module.name`` of a child process wait at each call (``root/site/sitecustomize.py``).

    Parameters
    ----------
    root : Path
        A folder of the test's own (``tmp_path``): ``site/`` and ``sync/`` are made in it.
    module, name : str
        The function to pause, as the caller looks it up (``defacer.verify``, ``verify_pair``).
    step : str
        The name of the files: ``at-<step>``, ``go-<step>``.
    limit_s : float
        The longest a call waits for ``go-<step>``, in seconds (a test that fails never hangs the child).
    """
    site, sync = root / "site", root / "sync"
    site.mkdir()
    sync.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(
        env=SYNC_ENV, module=module, name=name, at=f"at-{step}", go=f"go-{step}", limit_s=float(limit_s)))
    return Pause(sync, os.pathsep.join([str(site), *sys.path]), sync / f"at-{step}", sync / f"go-{step}")


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120.0) -> bool:
    """Whether ``path`` appeared before ``process`` ended (or ``timeout`` seconds passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if process.poll() is not None:
            return path.exists()
        time.sleep(0.02)
    return False


def phantom_dataset(root: Path, subjects: tuple[str, ...] = ("01", "02")) -> tuple[Path, Path]:
    """A BIDS folder ``root/ds`` of 4 mm phantom heads, ``sub-<id>/anat/sub-<id>_T1w.nii.gz``, and their label maps
    under ``root/labels`` (the same relative paths, ``.labels.nii.gz``); returns the two folders."""
    ds, labels = root / "ds", root / "labels"
    for sub in subjects:
        (ds / f"sub-{sub}" / "anat").mkdir(parents=True)
        (labels / f"sub-{sub}" / "anat").mkdir(parents=True)
        save_phantom(make_phantom(4.0), ds / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz",
                     labels / f"sub-{sub}/anat/sub-{sub}_T1w.labels.nii.gz")
    return ds, labels
