"""Data layer: decoding (`images`), preprocessing (`transforms`), ImageFolder datasets and loaders
(`datasets`), and the Fashion-MNIST preparation used by tests and examples (`fashion_mnist`)."""
from conformer_vision.data.datasets import ImageFolderDataset, build_class_list, build_loader, set_loader_epoch
from conformer_vision.data.fashion_mnist import FASHION_MNIST_CLASSES, prepare_fashion_mnist
from conformer_vision.data.images import IMAGE_EXTENSIONS, check_image, is_hidden, is_image_file, list_images, load_rgb
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
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "ImageFolderDataset",
    "Preprocess",
    "build_class_list",
    "build_loader",
    "build_train_transform",
    "check_image",
    "is_hidden",
    "is_image_file",
    "list_images",
    "load_rgb",
    "prepare_fashion_mnist",
    "preprocess_image",
    "set_loader_epoch",
]
