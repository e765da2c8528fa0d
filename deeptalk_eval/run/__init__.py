"""The evaluation run: task -> requests -> model (cached) -> scorers -> metrics -> results.

`plan.prepare` checks what a run needs before anything runs, `loop.run` evaluates task by
task; `rescore` and `merge` make new results files from the per-sample logs of old ones.
"""
