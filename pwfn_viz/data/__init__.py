"""Datasets by name (digits embedded, local torchvision folders, image folders, synthetic) and loaders."""
from .datasets import (IMAGE_SUFFIXES, DataBundle, ImageTransform, TensorImageDataset, create_dataset, list_datasets,
                       auto_workers, in_memory, make_loader, register_dataset, train_subset)
from .cifar import load_numpy_pickle            # registers "cifar10" and "cifar100"
from .imagefolder import reference_transforms   # registers "imagefolder"
