"""The sweep: planning the grid, training its groups, recording runs, generations, launchers, status.

Exports nothing itself: import from its modules.
"""
