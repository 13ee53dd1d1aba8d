"""Where a temperature is computed: the schedule base (and a run's per-step table), the registry, the
built-in schedules and users' own. Exports nothing itself: import from its modules.
"""

from kdtemp.temperature import schedules  # noqa: F401 - importing it registers the built-in schedules
