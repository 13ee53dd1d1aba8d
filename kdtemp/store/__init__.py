"""Where a run's files are and what they hold: the layout, typed records, atomic file I/O, locks, loggers.

Exports nothing itself: import from its modules.
"""
