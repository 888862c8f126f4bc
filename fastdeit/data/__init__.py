"""Data loading for DeiT: ImageFolder datasets through DALI or PIL, synthetic data, digits.

Entry points:
    LoaderConfig(...)                                   every loader setting, validated once (fastdeit.data.config)
    build_loader(source, split=..., config=...) -> (loader, DataInfo)   training and evaluation batches
    build_predict_loader(paths, config) -> loader       inference on a list of files
    Mixup, RandomErasing                                batch augmentations on the device

Every loader yields `(images, targets)`: images (B, 3, S, S) float32 normalized with
IMAGENET_MEAN/IMAGENET_STD, targets (B,) int64, both on the requested device; see
fastdeit.data.loader.ImageFileLoader for shuffling, sharding, resuming and unreadable files.
Eval batches are padded to full size with rows labelled PAD_LABEL (-1): count `targets != PAD_LABEL`
for accuracy (summed over ranks, each sample counts once) and give losses ignore_index=PAD_LABEL.
"""

from fastdeit.data.augment import RandAugmentConfig
from fastdeit.data.build import DataInfo, build_loader, build_predict_loader, choose_backend, dali_available
from fastdeit.data.common import IMAGENET_MEAN, IMAGENET_STD, PAD_LABEL, DataConfigError, DataWarning
from fastdeit.data.config import BACKENDS, LoaderConfig
from fastdeit.data.digits import prepare_digits
from fastdeit.data.folder import ImageFolderIndex, scan_image_folder
from fastdeit.data.loader import BatchLoader
from fastdeit.data.mix import Mixup, RandomErasing
from fastdeit.data.synthetic import SyntheticLoader

__all__ = [
    "BACKENDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PAD_LABEL",
    "BatchLoader",
    "DataConfigError",
    "DataInfo",
    "DataWarning",
    "ImageFolderIndex",
    "LoaderConfig",
    "Mixup",
    "RandAugmentConfig",
    "RandomErasing",
    "SyntheticLoader",
    "build_loader",
    "build_predict_loader",
    "choose_backend",
    "dali_available",
    "prepare_digits",
    "scan_image_folder",
]
