"""A guard for tests: fail when code reads a tensor's value into Python (a host synchronisation on CUDA).

On an accelerator ``int(t)``, ``t.item()``, ``t.tolist()``, ``bool(t)`` (and ``float``, ``__index__``) wait
for every queued kernel. The guard patches those methods of :class:`torch.Tensor` so that a CPU test can
assert that a forward pass never calls them; it runs on any machine. Data-dependent shapes computed inside
an operator (``nonzero``, ``unique``) are not seen here; the CUDA test with
``torch.cuda.set_sync_debug_mode("error")`` covers those on a GPU.
"""
from __future__ import annotations

import contextlib
import traceback

import torch

_METHODS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")


class HostSyncError(AssertionError):
    """A tensor value was read into Python inside :func:`forbid_host_sync`."""


@contextlib.contextmanager
def forbid_host_sync():
    """Raise :class:`HostSyncError` (with the caller's line) on any value read of a tensor in the block."""
    originals = {name: getattr(torch.Tensor, name) for name in _METHODS}

    def guard(name):
        def refuse(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            raise HostSyncError(f"Tensor.{name} called at {caller.filename}:{caller.lineno} ({caller.line})")

        return refuse

    for name in _METHODS:
        setattr(torch.Tensor, name, guard(name))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
