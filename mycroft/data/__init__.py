"""Labelled data behind one interface (`DataSource.load(split) -> LabeledData`)."""

from mycroft.data.base import DataSource, LabeledData
from mycroft.data.digits import Digits
from mycroft.data.fashion_mnist import FashionMNIST
from mycroft.data.noise import corrupt_features, flip_labels
from mycroft.data.npz import NpzSource, save_npz
from mycroft.data.registry import available_sources, default_source, open_source, register_source
from mycroft.data.tables import CsvSource, ParquetSource

__all__ = [
    "CsvSource",
    "DataSource",
    "Digits",
    "FashionMNIST",
    "LabeledData",
    "NpzSource",
    "ParquetSource",
    "available_sources",
    "corrupt_features",
    "default_source",
    "flip_labels",
    "open_source",
    "register_source",
    "save_npz",
]
