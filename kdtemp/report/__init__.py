"""The report: results in; settings, tables, verdict, statistics, plots and rendered files out.

Exports nothing itself: import from its modules.
"""
