"""ReID datasets in their original layouts, built once into array_record files by TFDS."""

from data_pipeline.datasets import fingerprint
from data_pipeline.datasets.builders import (
                                             BUILDERS,
                                             data_sources,
                                             prepare,
                                             prepared_source,
                                             read_columns,
)
from data_pipeline.datasets.layouts import DatasetLayoutError

__all__ = ["BUILDERS", "DatasetLayoutError", "data_sources", "fingerprint", "prepare",
           "prepared_source", "read_columns"]
