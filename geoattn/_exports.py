"""Lazy package exports (PEP 562), so that the command line can build its parser without importing torch."""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, list[str]], namespace: dict) -> tuple[list[str], Callable,
                                                                                          Callable]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` whose names live in its ``exports`` sub-modules
    (``{module: [name, ...]}``); a name is imported on first access and then cached in ``namespace``."""
    owner = {name: module for module, names in exports.items() for name in names}
    names = sorted(owner)

    def __getattr__(name: str):
        module = owner.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return names, __getattr__, __dir__
