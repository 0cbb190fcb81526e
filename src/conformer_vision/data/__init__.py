"""Data layer: decoding (`images`), preprocessing (`transforms`), the class-folder index (`index`),
ImageFolder datasets and loaders (`datasets`), WebDataset shards (`shards`), and the Fashion-MNIST
preparation used by tests and examples (`fashion_mnist`)."""

from conformer_vision.data.datasets import ImageFolderDataset, build_class_list, set_loader_epoch
from conformer_vision.data.fashion_mnist import FASHION_MNIST_CLASSES, prepare_fashion_mnist
from conformer_vision.data.images import IMAGE_EXTENSIONS, check_image, is_hidden, is_image_file, list_images, load_rgb
from conformer_vision.data.index import FolderIndex, index_splits, scan_split
from conformer_vision.data.shards import ShardDataset, ShardSplit, open_split, write_shards
from conformer_vision.data.transforms import (
    DEFAULT_CROP_PCT,
    INTERPOLATIONS,
    Preprocess,
    build_train_transform,
    preprocess_image,
)

__all__ = [
    "DEFAULT_CROP_PCT",
    "FASHION_MNIST_CLASSES",
    "FolderIndex",
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "ImageFolderDataset",
    "Preprocess",
    "ShardDataset",
    "ShardSplit",
    "build_class_list",
    "build_train_transform",
    "check_image",
    "index_splits",
    "is_hidden",
    "is_image_file",
    "list_images",
    "load_rgb",
    "open_split",
    "prepare_fashion_mnist",
    "preprocess_image",
    "scan_split",
    "set_loader_epoch",
    "write_shards",
]
