"""Datasets: the zarr dataset format, Monte-Carlo returns and converters."""
