"""Datasets by name (digits embedded, local torchvision folders, image folders, synthetic) and loaders."""
from .datasets import (IMAGE_SUFFIXES, DataBundle, ImageTransform, TensorImageDataset, create_dataset, list_datasets,
                       auto_workers, in_memory, load_numpy_pickle, make_loader, register_dataset, train_subset)
from .imagefolder import reference_transforms   # registers "imagefolder"
