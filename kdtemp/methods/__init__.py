"""KD methods, one module each, behind the protocol of `methods.base.KDMethod`; the registry is `registry.py`.

Where each lives: plain KD and the ensemble's soft targets, `soft_targets.py` (Hinton et al. 2015);
logit standardisation and its effective temperature, `logit_std.py` (Sun et al. 2024); CTKD's learned
temperature and its penalty, `ctkd.py` (Li et al. 2023); FitNets hints, `hints.py` (Romero et al.
2015). The pure math they call is in `kdtemp/losses.py`; a scheduled temperature,
`kdtemp/temperature/schedules.py`.

Adding a method is one file with a `KDMethod` subclass and one line in `registry.METHODS`; a member
uses it when its `Member.methods` names it (`kdtemp.sweep.runner.member_for` maps a run to its
methods). The registry's order is the order in which temperatures pass through methods and terms are
added to the loss.

Exports the protocol a user's own method is written against (`module:Class` in kd.methods):
`KDMethod`, `Step`, `Terms`, `GroupSetting` and `register_method`. Inside kdtemp, import them from the
modules that define them.
"""

from kdtemp.methods.base import GroupSetting, KDMethod, Step, Terms
from kdtemp.methods.registry import register_method

__all__ = ["GroupSetting", "KDMethod", "Step", "Terms", "register_method"]
