"""Teachers: training one, loading and checking trained ones (with their cached logits), checkpoint formats.

Exports nothing itself: import from its modules.
"""
