"""Long-tailed data sets; every one exposes ``cls_num_list`` (training images per class) and ``targets``."""
from .cifar_lt import CIFARLongTail, long_tail_counts, long_tail_positions, validation_positions
from .labels import CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR_DATA_CFG
from .listfile import ImageFolderLT, ListFileDataset, read_list_file, stratified_holdout
from .sources import ImageSource, load_rgb

__all__ = ["CIFARLongTail", "long_tail_counts", "long_tail_positions", "validation_positions", "ListFileDataset",
           "ImageFolderLT", "read_list_file", "stratified_holdout", "ImageSource", "load_rgb", "CIFAR10_CLASSES",
           "CIFAR100_CLASSES", "CIFAR_DATA_CFG"]
