"""The dataset registry: a config's `data.dataset` name to the loader that builds its Dataset.

Loaders register with `@register_dataset(name)`; the package's __init__ imports the built-in and
users' loaders, so the registry is full once `kdtemp.data` is imported.
"""

from __future__ import annotations

from collections.abc import Callable

from kdtemp.config.schema import DataConfig
from kdtemp.data.dataset import Dataset, with_channels
from kdtemp.data.validation import with_validation
from kdtemp.errors import DataError

Loader = Callable[[DataConfig], Dataset]


_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def decorate(loader: Loader) -> Loader:
        _LOADERS[name] = loader
        return loader

    return decorate


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(config: DataConfig) -> Dataset:
    """Load `config.dataset` on the CPU, with its validation split (and data.channels); the caller moves
    it to the run's device."""
    try:
        loader = _LOADERS[config.dataset]
    except KeyError:
        raise DataError(
            f"unknown dataset {config.dataset!r}; choose one of {', '.join(dataset_names())}"
        ) from None
    return with_channels(with_validation(loader(config), config), config.channels)
