"""K students trained in lockstep as one stacked model, and the teacher's signal for each step.

Exports nothing itself: import from its modules.
"""
