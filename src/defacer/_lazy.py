"""Names of a package imported on first use (PEP 562), for packages whose imports are costly."""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (imported by ``import defacer``)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def lazy_exports(namespace: dict[str, Any], exports: dict[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` that import each exported name from its module on first use.

    Parameters
    ----------
    namespace : dict
        The package's ``globals()``: an imported name is kept there, so the next access is plain.
    exports : dict of str to str
        Exported name -> the module that defines it.

    Returns
    -------
    (__getattr__, __dir__)
        To assign at the package's top level.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *namespace.get("__all__", ())})

    return __getattr__, __dir__
