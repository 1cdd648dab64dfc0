"""Per-epoch training log: a CSV of metrics and a training-curve PNG beside the checkpoint.

::

    log = TrainingLog(out_dir, resume=args.resume)
    for epoch in range(start, epochs):
        ...
        log.append({"epoch": epoch + 1, "loss": loss, "lr": lr, "Car_3d/moderate_R40": ap})
        log.plot()                       # out_dir/curve.png (matplotlib, the ``plot`` extra)

The CSV header is the first row's keys; a later row that brings new keys rewrites the file with the union of
the columns (old rows get empty cells). Both files are rewritten whole and atomically
(:func:`geoattn.io.atomic_write_bytes`), so a reader never sees half a row and a crash never truncates the log.
With ``resume=True`` the existing CSV is read back, and :meth:`TrainingLog.truncate` drops rows of epochs a
resumed run will redo.
"""
from __future__ import annotations

import csv
import io
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from geoattn.io import atomic_write_figure, atomic_write_text

__all__ = ["TrainingLog", "read_csv_log", "plot_training_curve"]

_MATPLOTLIB_MISSING = ("matplotlib is not installed, so the training curve {path} is not written; "
                       "install it with `pip install geoattn[plot]` (or `pip install matplotlib`)")


def _cell(value: Any) -> str:
    """CSV text of one value: floats with repr precision (round-trips), tensors/numpy scalars as numbers."""
    if value is None:
        return ""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _number(text: Any) -> float | None:
    """``float(text)`` or None for empty / non-numeric / non-finite cells."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        try:
            value = float(str(text))
        except ValueError:
            return None
    return value if math.isfinite(value) else None


def read_csv_log(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a CSV log as dicts of strings (``[]`` for a missing or empty file)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as stream:
        return [dict(row) for row in csv.DictReader(stream)]


def plot_training_curve(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, x: str = "epoch",
                        keys: Iterable[str] | None = None, title: str | None = None) -> Path:
    """Draw one panel per metric (``keys``, default every numeric column but ``x``) against ``x`` and write the
    PNG atomically to ``path``. Columns whose name contains ``loss`` share the first panel, on a log scale
    when all values are positive. Uses matplotlib's object API with the Agg canvas (no pyplot state, no
    display needed). Raises ``ImportError`` with an install hint when matplotlib is missing and
    ``ValueError`` when ``rows`` is empty or no column is numeric.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(_MATPLOTLIB_MISSING.format(path=path)) from None
    if not rows:
        raise ValueError(f"plot_training_curve: rows is empty, nothing to plot into {path}")
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    if keys is None:
        keys = [key for key in columns if key != x and any(_number(row.get(key, "")) is not None for row in rows)]
    keys = list(keys)
    if not keys:
        raise ValueError(f"plot_training_curve: no numeric column besides {x!r} in {columns}")
    losses = [key for key in keys if "loss" in key.lower()]
    panels: list[list[str]] = ([losses] if losses else []) + [[key] for key in keys if key not in losses]
    count = len(panels)
    cols = min(count, 3)
    nrows = math.ceil(count / cols)
    figure = Figure(figsize=(4.2 * cols, 3.2 * nrows), dpi=100)
    FigureCanvasAgg(figure)
    for index, panel in enumerate(panels):
        axis = figure.add_subplot(nrows, cols, index + 1)
        positive = True
        for key in panel:
            points = [(_number(row.get(x, i)), _number(row.get(key, ""))) for i, row in enumerate(rows)]
            points = [(px, py) for px, py in points if px is not None and py is not None]
            if not points:
                continue
            positive &= all(py > 0 for _, py in points)
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=key)
        if len(panel) > 1:
            axis.legend(fontsize=7)
        if panel is losses and positive and len(panel) > 0 and axis.lines:
            axis.set_yscale("log")
        axis.set_title(panel[0] if len(panel) == 1 else "losses", fontsize=9)
        axis.set_xlabel(x, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return atomic_write_figure(path, figure)


class TrainingLog:
    """Per-epoch metrics in ``out_dir/csv_name`` and their curves in ``out_dir/plot_name``.

    Args:
        out_dir: folder of the checkpoint (created when missing).
        csv_name, plot_name: file names inside ``out_dir`` (defaults ``log.csv``, ``curve.png``).
        resume: read the rows of an existing CSV and append to them; otherwise the first :meth:`append`
            replaces any old file.
        x: the column plotted on the horizontal axis (default ``epoch``; the row index when absent).
    """

    def __init__(self, out_dir: str | os.PathLike, csv_name: str = "log.csv", plot_name: str = "curve.png",
                 resume: bool = False, x: str = "epoch") -> None:
        for name, value in (("csv_name", csv_name), ("plot_name", plot_name)):
            if not isinstance(value, str) or not value or os.sep in value:
                raise ValueError(f"TrainingLog: {name} must be a plain file name, got {value!r}")
        self.out_dir = Path(out_dir)
        self.csv_path = self.out_dir / csv_name
        self.plot_path = self.out_dir / plot_name
        self.x = x
        self.rows: list[dict[str, Any]] = read_csv_log(self.csv_path) if resume else []

    @property
    def columns(self) -> list[str]:
        """Union of the row keys in first-seen order (the CSV header)."""
        columns: list[str] = []
        for row in self.rows:
            columns.extend(key for key in row if key not in columns)
        return columns

    def append(self, row: Mapping[str, Any]) -> Path:
        """Add one row (a mapping of column -> number or text) and rewrite the CSV; return its path.
        ``TypeError`` for a non-mapping or non-str keys, ``ValueError`` for an empty row."""
        if not isinstance(row, Mapping):
            raise TypeError(f"TrainingLog.append: row must be a mapping, got {type(row).__name__}")
        if not row:
            raise ValueError("TrainingLog.append: row is empty")
        bad = [key for key in row if not isinstance(key, str)]
        if bad:
            raise TypeError(f"TrainingLog.append: column names must be str, got {bad!r}")
        self.rows.append(dict(row))
        return self.write()

    def truncate(self, keep: Callable[[Mapping[str, Any]], bool] | None = None, *, after: float | None = None) -> None:
        """Drop rows: those with ``x`` greater than ``after`` (a resumed run redoes them), or those for which
        ``keep(row)`` is false. Rewrites the CSV when rows were dropped."""
        if (keep is None) == (after is None):
            raise ValueError("TrainingLog.truncate: give exactly one of keep or after")
        if keep is None:
            def keep(row):
                value = _number(row.get(self.x, ""))
                return value is None or value <= after
        before = len(self.rows)
        self.rows = [row for row in self.rows if keep(row)]
        if len(self.rows) != before:
            self.write()

    def write(self) -> Path:
        """Rewrite the whole CSV atomically (header = :attr:`columns`)."""
        stream = io.StringIO()
        writer = csv.writer(stream, lineterminator="\n")
        columns = self.columns
        writer.writerow(columns)
        for row in self.rows:
            writer.writerow([_cell(row.get(key)) for key in columns])
        return atomic_write_text(self.csv_path, stream.getvalue())

    def plot(self, keys: Iterable[str] | None = None, title: str | None = None, strict: bool = False) -> Path | None:
        """Write the training-curve PNG (:func:`plot_training_curve`) and return its path. Without matplotlib:
        a ``RuntimeWarning`` with the install hint and ``None`` (``strict=True``: the ``ImportError``)."""
        if not self.rows:
            return None
        try:
            return plot_training_curve(self.rows, self.plot_path, x=self.x, keys=keys, title=title)
        except ImportError as error:
            if strict:
                raise
            warnings.warn(str(error), RuntimeWarning, stacklevel=2)
            return None
