"""The zarr dataset format (version 1): public API.

Layout, attributes, the final-observation rule and the commit rule are described in docs/DESIGN.md and in detail in
docs/dataset_format.md. Everything else in calql_robot imports from here::

    from calql_robot.datasets.format import DatasetWriter, ZarrDataset, obs_spec_from_space, staged_store
"""

from __future__ import annotations

from calql_robot.datasets.lazy import DEFAULT_CACHE_BYTES, ChunkCache, LazyArray
from calql_robot.datasets.reader import ZarrDataset
from calql_robot.datasets.spec import (
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_CHUNK_LEN,
    KIND_LOW_DIM,
    KIND_RGB,
    obs_spec_from_space,
    validate_obs_spec,
)
from calql_robot.datasets.staging import staged_store
from calql_robot.datasets.writer import DatasetWriter

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "IMAGE_CHUNK_LEN",
    "KIND_LOW_DIM",
    "KIND_RGB",
    "ChunkCache",
    "DatasetWriter",
    "LazyArray",
    "ZarrDataset",
    "obs_spec_from_space",
    "staged_store",
    "validate_obs_spec",
]
