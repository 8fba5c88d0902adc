"""Datasets and partitioners as plain numpy arrays; they know nothing about agents or Ray.

Loaders (`data._target_`) return a :class:`Dataset`; partitioners (`partition._target_`) are
``fn(labels, n_agents, **keys) -> list of index arrays``.
"""

from dimat.data.datasets import (
    DATASETS, LOADERS, Dataset, DatasetNotFound, cifar10, cifar100, digits, fashion_mnist, load_dataset, mnist,
    prepare_dataset, read_idx, stratified, synthetic,
)
from dimat.data.partition import (
    PARTITIONERS, PARTITIONS, PartitionError, check_parts, class_histogram, classes, dirichlet, iid, own_classes,
    partition, shards,
)

__all__ = [
    "DATASETS", "LOADERS", "PARTITIONERS", "PARTITIONS", "Dataset", "DatasetNotFound", "PartitionError", "check_parts",
    "cifar10", "cifar100", "class_histogram", "classes", "digits", "dirichlet", "fashion_mnist", "iid", "load_dataset",
    "mnist", "own_classes", "partition", "prepare_dataset", "read_idx", "shards", "stratified", "synthetic",
]
