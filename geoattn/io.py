"""Atomic file writes and checkpoints: the one ground-floor home for both.

Every writer in geoattn that replaces a file the user may be reading (checkpoints, logs, predictions,
pictures) goes through :func:`atomic_write_bytes`: the bytes go to a temporary file in the destination's
folder (so the rename never crosses a file system), are flushed and fsynced, get the mode a plain
``open(path, "w")`` would give (``0o666 & ~umask``, never mkstemp's ``0o600``), and are renamed over the
destination with :func:`os.replace`. A reader therefore sees the old file or the new one, never half of
one, and an interrupted write leaves no temporary file behind.

Checkpoints (:func:`save_checkpoint` / :func:`load_checkpoint`) are ``torch.save`` dictionaries written
atomically and read back with ``weights_only=True``: tensors, numbers, strings, lists, tuples and dicts
only, so loading a file from elsewhere cannot run code.

Data pickles from other projects (mmdetection3d / OpenPCDet infos, Predator / GeoTransformer ``.pth``
fragments and pair lists) are read by :func:`restricted_pickle_load`, the one restricted unpickler of
geoattn: plain containers, numbers, strings and numpy arrays / scalars, nothing else.
"""
from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_figure", "figure_png", "current_umask",
           "save_checkpoint", "load_checkpoint", "PickleRefusedError", "restricted_pickle_load",
           "restricted_pickle_loads", "check_plain"]


def current_umask() -> int:
    """The process umask (set and restored at once; the umask is process-global, so this is not thread-safe
    against a concurrent ``os.umask`` call, like every umask query without an OS-specific interface)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path`` as a :class:`~pathlib.Path`.

    Steps: create the parent folder if needed; ``mkstemp`` in that folder; write, flush, fsync; chmod to
    ``0o666 & ~umask``; ``os.replace`` over ``path``. On any failure (including KeyboardInterrupt) the
    temporary file is removed and the exception re-raised; ``path`` is then untouched.

    Raises ``TypeError`` when ``data`` is not bytes-like and ``IsADirectoryError`` when ``path`` is a folder.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write_bytes: data must be bytes-like, got {type(data).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return path


def figure_png(figure, dpi: float | None = None) -> bytes:
    """A matplotlib ``figure`` rendered to PNG bytes in memory (so that a caller can render before it writes)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def atomic_write_figure(path: str | os.PathLike, figure, dpi: float | None = None) -> Path:
    """Render a matplotlib ``figure`` to PNG in memory (:func:`figure_png`) and write it with
    :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, figure_png(figure, dpi))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text.encode(encoding)`` (no newline translation). ``TypeError`` when
    ``text`` is not a str."""
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text: text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding))


_PLAIN = (str, int, float, bool, type(None))


def check_plain(value: Any, where: str) -> None:
    """Raise ``TypeError`` naming the key path when ``value`` holds anything but plain YAML/JSON types."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: keys must be str or int, got {type(key).__name__} {key!r}")
            check_plain(item, f"{where}.{key}")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where}: expected plain types (dict, list, str, int, float, bool, None), got "
                    f"{type(value).__name__}")


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> Path:
    """Write ``{**state, "config": config}`` with ``torch.save`` atomically (see :func:`atomic_write_bytes`).

    ``state`` is a dict of tensors, state dicts, numbers, strings, lists and dicts (what ``weights_only``
    loading accepts); ``config`` (optional) must hold plain types only -- it is how a loader checks that a
    checkpoint belongs to the configuration it is about to build. Tensors are saved as they are (move them
    to the CPU first if the file is to be read on a machine without the device).

    Raises ``TypeError`` for a ``state`` that is not a mapping or a ``config`` with non-plain values (naming
    the key path), ``ValueError`` when ``state`` already has a different ``"config"`` entry.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"save_checkpoint: state must be a dict, got {type(state).__name__}")
    payload = dict(state)
    if config is not None:
        check_plain(config, "config")
        if "config" in payload and payload["config"] != config:
            raise ValueError("save_checkpoint: state already has a 'config' entry that differs from config")
        payload["config"] = dict(config)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The dictionary written by :func:`save_checkpoint` (or any ``torch.save`` dict of weights-only types).

    Loaded with ``torch.load(weights_only=True)``, tensors mapped by ``map_location`` (default CPU).
    Raises ``FileNotFoundError`` naming the file when it does not exist (or is a folder) and ``ValueError``
    naming the file when it is empty, truncated, not a torch file, holds types the weights-only loader
    refuses, or is not a dictionary.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise FileNotFoundError(f"{path}: is a folder, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the checkpoint file is empty")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path}: not a weights-only checkpoint or corrupt ({_useful_line(error)})") from None
    except PermissionError:
        raise
    except Exception as error:  # the unpicklers raise many types (IndexError, EOFError, RuntimeError, ...)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: corrupt or truncated checkpoint ({type(error).__name__}: {first})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a checkpoint dictionary, got {type(state).__name__}")
    return state


#: The globals a data pickle may name: numpy arrays, dtypes and scalars (numpy 1.x and 2.x module paths), the
#: byte-string helper protocol-2 pickles use for numpy buffers, and OrderedDict.
PICKLE_ALLOWED_GLOBALS = frozenset({
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
})


class PickleRefusedError(ValueError, pickle.UnpicklingError):
    """A data pickle that names a global outside :data:`PICKLE_ALLOWED_GLOBALS`, or cannot be parsed (cut short,
    not a pickle). Both a ``ValueError`` (one-line user error) and a ``pickle.UnpicklingError``."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in PICKLE_ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain containers and numpy arrays "
                                     "are allowed)")


def _torch_zip_globals() -> list:
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    return [_reconstruct, scalar, np.ndarray, np.dtype, *{type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGSUV"}]


def restricted_pickle_load(path: str | os.PathLike, what: str = "pickle"):
    """The object in the pickle file ``path``, built from plain containers, numbers, strings and numpy
    arrays / scalars only (a ``torch.save`` zip file is read with the weights-only loader, numpy allowed).

    Raises ``FileNotFoundError`` naming the file when it is missing and :class:`PickleRefusedError` naming
    the file (and ``what`` it should be, e.g. ``"info pickle"``) for any other class in the pickle -- whose
    code is then never run -- and for a file that is empty, cut short or not a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} file")
    return restricted_pickle_loads(path.read_bytes(), str(path), what)


def restricted_pickle_loads(data: bytes, source: str, what: str = "pickle"):
    """:func:`restricted_pickle_load` of bytes in memory; ``source`` (a file name, or a file and a member of
    it) is what an error names."""
    try:
        if data[:2] == b"PK":
            with torch.serialization.safe_globals(_torch_zip_globals()):
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except Exception as error:  # a corrupt pickle raises many types (EOFError, KeyError, struct.error, ...)
        raise PickleRefusedError(f"{source}: not a readable {what} ({type(error).__name__}: "
                                 f"{_useful_line(error)})") from None


def _useful_line(error: BaseException) -> str:
    """One line of ``error``'s message: torch's weights-only refusal spreads over many lines, and the one that
    names the refused global is the useful one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return next((line for line in lines if "global" in line.lower() and "weights_only" not in line), lines[0])
