"""Optional accelerators, probed once at import.

Every optional dependency of geoattn is looked up here and nowhere else, so the choice of backend is
made in one place and reported by ``geoattn info``. Nothing here imports the rest of geoattn.
"""
from __future__ import annotations

import functools
import importlib
import os

__all__ = ["torch_scatter", "open3d_ops", "spconv", "triton", "forced_backend", "debug_checks", "describe", "check_device"]


def _try_import(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # an installed but broken extension must not break geoattn
        return None


@functools.lru_cache(maxsize=None)
def torch_scatter():
    """The ``torch_scatter`` module when importable, else ``None`` (optional accelerator)."""
    return _try_import("torch_scatter")


@functools.lru_cache(maxsize=None)
def open3d_ops():
    """``open3d.ml.torch.ops`` (CPU knn/radius/FPS/voxelize) when importable, else ``None``."""
    if os.environ.get("GEOATTN_NO_OPEN3D") == "1":
        return None
    ml = _try_import("open3d.ml.torch")
    return getattr(ml, "ops", None) if ml is not None else None


@functools.lru_cache(maxsize=None)
def spconv():
    """``spconv.pytorch`` when importable, else ``None``."""
    return _try_import("spconv.pytorch")


@functools.lru_cache(maxsize=None)
def triton():
    """The ``triton`` module when importable, else ``None``."""
    return _try_import("triton")


@functools.lru_cache(maxsize=None)
def cpu_native_bf16() -> bool:
    """Whether this CPU has native bfloat16 matrix units usable by torch (oneDNN), where bfloat16 matrix
    products run ~2-3x faster than float32; elsewhere they are emulated and slower."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def forced_backend() -> str | None:
    """Value of ``GEOATTN_BACKEND`` (``naive``, ``cpu`` or ``triton``) or ``None`` for automatic dispatch."""
    value = os.environ.get("GEOATTN_BACKEND")
    if value is None or value == "":
        return None
    if value not in ("naive", "cpu", "triton"):
        raise ValueError(f"GEOATTN_BACKEND must be one of 'naive', 'cpu', 'triton', got {value!r}")
    return value


def debug_checks() -> bool:
    """``GEOATTN_DEBUG=1`` turns on value checks that cost a pass over the data (sortedness, index ranges)."""
    return os.environ.get("GEOATTN_DEBUG", "") not in ("", "0")


def check_device(device: str) -> None:
    """``ValueError`` unless ``device`` is ``cpu`` or an available ``cuda[:i]`` (the commands' ``--device``)."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"--device: expected cpu or cuda[:i], got {device!r}")


def _version(module) -> str:
    if module is None:
        return "not installed"
    return str(getattr(module, "__version__", "installed"))


def describe() -> dict[str, str]:
    """Versions and active backends, as printed by ``geoattn info``. ``ValueError`` (from
    :func:`forced_backend`) when ``GEOATTN_BACKEND`` names no backend."""
    import platform

    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    pyg = _try_import("torch_geometric")
    info["torch_geometric"] = _version(pyg)
    info["numpy"] = _version(_try_import("numpy"))
    scatter = torch_scatter()
    info["scatter backend"] = f"torch_scatter {_version(scatter)}" if scatter is not None else "native torch"
    o3d = _try_import("open3d")
    ops = open3d_ops()
    info["neighbour backend"] = (
        f"open3d.ml.torch.ops (open3d {_version(o3d)})" if ops is not None else "pure torch (blocked)"
    )
    sp = spconv()
    spconv_pkg = _try_import("spconv")
    info["spconv"] = _version(spconv_pkg) if sp is not None else "not installed"
    tr = triton()
    info["triton"] = _version(tr)
    if torch.cuda.is_available():
        info["cuda device"] = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        info["cuda device"] = "none (CPU only)"
    info["sla kernel"] = "triton (CUDA tensors), cpu (CPU tensors)" if tr is not None else "cpu"
    forced = forced_backend()
    if forced:
        info["forced backend"] = forced
    info["threads"] = str(torch.get_num_threads())
    return info
