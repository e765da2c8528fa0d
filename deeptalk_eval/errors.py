"""The one exception type for a user's mistakes.

Everything the user hands the harness can be wrong: a model or task name, `--model-args`,
a task file, a data file, an output folder, a model server that is not running. Such a
mistake raises `UsageError` (or a subclass: `TaskConfigError`, `LeaderboardError`,
`RegressError`, an adapter's own set-up error); `deeptalk_eval.cli.main` — the only place
that catches it — prints its message as one line and exits with status 2. Any other
exception is a bug and keeps its traceback.

It is a `ValueError` so that callers written before it existed keep working.
"""
from __future__ import annotations


class UsageError(ValueError):
    """A mistake in what the user gave; the message says what is wrong and where."""
