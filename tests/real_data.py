"""Where the suite finds the real head scans (never copied into the repository).

``../shared/data`` beside the checkout, as CI and developer machines have it.  A git worktree made elsewhere (for
example ``/work/wt/NAME`` beside a main checkout ``/work/main``) usually has no ``shared`` folder beside it: there the
main checkout's ``../shared/data`` is used, so that the real-data tests run in the worktree rather than skip without
anyone noticing (session 30: a real-data regression passed a helper's worktree runs and was caught only by CI).
``DEFACER_TEST_DATA`` names another folder.  Tests skip, with the path, where none of these exists.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The checkout (or worktree) this suite belongs to.
REPO = Path(__file__).resolve().parents[1]
#: Environment variable that names the real-data folder (the one holding ``heads/``).
ENV = "DEFACER_TEST_DATA"


def main_checkout(repo: Path) -> Path | None:
    """The main checkout of the git worktree ``repo``, or ``None`` where ``repo`` is no linked worktree.

    A linked worktree's ``.git`` is a file ``gitdir: <main>/.git/worktrees/<name>``.
    """
    marker = repo / ".git"
    if not marker.is_file():
        return None
    try:
        text = marker.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    gitdir = Path(text[len("gitdir:"):].strip())
    if not gitdir.is_absolute():
        gitdir = (repo / gitdir).resolve()
    if gitdir.parent.name != "worktrees" or gitdir.parent.parent.name != ".git":
        return None
    return gitdir.parent.parent.parent


def real_data_folder(repo: Path = REPO, environ: dict[str, str] | None = None) -> Path:
    """The real-data folder: :data:`ENV` where set, else ``repo/../shared/data``, else (a linked worktree) the main
    checkout's ``../shared/data`` where that exists; the first of the last two otherwise (the tests then skip)."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get(ENV):
        return Path(environ[ENV])
    beside = repo.parent / "shared" / "data"
    if beside.is_dir():
        return beside
    main = main_checkout(repo)
    if main is not None and (main.parent / "shared" / "data").is_dir():
        return main.parent / "shared" / "data"
    return beside


#: The folder the suite reads real scans from (``heads/``, ``templates/``, ...).
SHARED_DATA = real_data_folder()
