"""Shared sparse primitives: every model in geoattn is built on these (depends on torch only)."""
from geoattn.sparse.segment import (
    SCATTER_BACKEND,
    counts_from_offsets,
    index_from_offsets,
    offsets_from_counts,
    offsets_from_index,
    scatter_max,
    scatter_mean,
    scatter_min,
    scatter_softmax,
    scatter_sum,
    segment_max,
    segment_mean,
    segment_min,
    segment_softmax,
    segment_sum,
)
