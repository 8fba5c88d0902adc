"""Datasets and partitioners as plain numpy arrays; they know nothing about agents or Ray."""

from dimat.data.datasets import DATASETS, Dataset, DatasetNotFound, load_dataset, read_idx
from dimat.data.partition import PARTITIONS, PartitionError, class_histogram, own_classes, partition

__all__ = [
    "DATASETS", "PARTITIONS", "Dataset", "DatasetNotFound", "PartitionError", "class_histogram", "load_dataset",
    "own_classes", "partition", "read_idx",
]
