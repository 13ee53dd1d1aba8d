"""Networks: the registry, the built-in nets, the CIFAR zoo, users' own, hint features, footprint, export.

Exports nothing itself: import from its modules.
"""

from kdtemp.models import nets, zoo  # noqa: F401 - importing them registers their builders
