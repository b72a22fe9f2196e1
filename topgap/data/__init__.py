"""Datasets and image input: the folder format, Oxford-IIIT Pet, CIFAR-10, the procedural benchmark, safe decoding."""
from .datasets import (FORMATS as FORMATS, IGNORE as IGNORE, IMAGE_EXTENSIONS as IMAGE_EXTENSIONS,
                       ImageDataset as ImageDataset, download_cifar10 as download_cifar10,
                       download_oxford_pet as download_oxford_pet, list_splits as list_splits, open_dataset as open_dataset,
                       pad_crop_flip as pad_crop_flip, read_image as read_image)
