"""Adaptation methods: one module per method, found by name through the registry.

``stvm_sdk/methods/<name>.py`` holds the built-in method ``<name>``; :mod:`.base` is the contract every
method meets; :mod:`.parts` the building blocks they share. Importing this package does not import
torch: :func:`method_names` reads the names from the folder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stvm_sdk.methods.registry import (
    get_method,
    ladder,
    method_keys,
    method_names,
    reach,
    register_method,
    resolve,
    unregister_method,
)

if TYPE_CHECKING:
    from stvm_sdk.methods.base import Method

__all__ = [
    "Method",
    "get_method",
    "ladder",
    "method_keys",
    "method_names",
    "reach",
    "register_method",
    "resolve",
    "unregister_method",
]


def __getattr__(name: str) -> Any:
    if name == "Method":  # imports torch: only when asked for
        from stvm_sdk.methods.base import Method

        return Method
    raise AttributeError(f"module 'stvm_sdk.methods' has no attribute {name!r}")
