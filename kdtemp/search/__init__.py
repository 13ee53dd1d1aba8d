"""`kdtemp search`: the sweep's grid (or ranges of T and alpha) searched with Optuna, the trials of a
batch trained as one lockstep group and pruned at rungs on validation accuracy, pruned members sliced
out of the group so the work per epoch really drops.

space.py says what a trial is (a grid cell), pruning.py which trials stop, study.py where the study
lives, shared_prefix.py which runs train as one member until they part, lockstep.py trains a batch of
trials and runner.py is the job; record.py is search.json, what
`kdtemp report` reads about a search.
"""
