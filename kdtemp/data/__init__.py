"""Datasets: the registry, the built-in sets, users' own data, augmentation.

Exports nothing itself: import from its modules.
"""

from kdtemp.data import arrays, builtin, custom, text  # noqa: F401 - importing them registers their loaders
