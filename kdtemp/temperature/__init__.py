"""Where a temperature is computed: the schedule base and registry, the built-in schedules, users' own.

Exports nothing itself: import from its modules (`schedules`, `custom`).
"""
