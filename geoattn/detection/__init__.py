"""3-D object detection tasks: target assignment, losses, decoding and NMS, data pipeline and metrics.

This is a task package (like :mod:`geoattn.registration` and :mod:`geoattn.pose`): it sits above
:mod:`geoattn.models`, whose detectors only produce dense head maps, and turns those maps into losses,
boxes and scores.
"""
