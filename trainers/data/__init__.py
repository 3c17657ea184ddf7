"""Data sets: the embedded digits default and loaders for local files.

File layouts for the loaders are documented in ``docs/data-formats.md``.
"""

from trainers.data._dataset import Dataset as Dataset
from trainers.data._dataset import fingerprint_arrays as fingerprint_arrays
from trainers.data.digits import load_digits as load_digits
from trainers.data.images import CIFAR10_SHAPE as CIFAR10_SHAPE
from trainers.data.images import load_cifar10 as load_cifar10
from trainers.data.images import load_image_arrays as load_image_arrays
from trainers.data.text import load_text_classification as load_text_classification
