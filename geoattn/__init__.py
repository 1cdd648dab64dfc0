"""geoattn: local/global attention for graphs and point clouds on shared sparse primitives."""

__version__ = "0.1.0"
