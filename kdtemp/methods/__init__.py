"""KD methods, one module each (soft_targets, logit_std, ctkd, hints) behind the protocol of base.py;
registry.py orders them. Exports the protocol a user's own `module:Class` method is written against.

`KDMethod`, `Step`, `Terms`, `GroupSetting` and `register_method` import from here; inside kdtemp,
import them from the modules that define them.
"""

from kdtemp.methods.base import GroupSetting, KDMethod, Step, Terms
from kdtemp.methods.registry import register_method

__all__ = ["GroupSetting", "KDMethod", "Step", "Terms", "register_method"]
