"""Training loops and what they share: loop pieces, the supervised trainer, stacking, optimisers,
metrics, randomness, the device. Exports nothing itself: import from its modules.
"""
