"""Data sets: the embedded digits default and loaders for local files."""

from trainers.data._dataset import Dataset as Dataset
from trainers.data._dataset import fingerprint_arrays as fingerprint_arrays
from trainers.data.digits import load_digits as load_digits
