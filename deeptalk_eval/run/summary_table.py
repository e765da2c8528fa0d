"""The terminal's table of a results file: task / metric / value / stderr / 95 % CI /
samples / failed."""
from __future__ import annotations

from typing import Any


def summary_table(results: dict[str, Any]) -> str:
    """Task / metric / value / stderr / 95 % CI / samples / failed, for the terminal."""
    from tabulate import tabulate

    rows = []
    for task, status in results.get("status", {}).items():
        m = results["results"].get(task)
        if not status.startswith("ok") or not m:
            rows.append([task, status, "", "", "", "", ""])
            continue
        names = [k for k in m if not k.endswith(("_stderr", "_ci", "_n"))
                 and k not in ("samples", "failed", "failure_rate")]
        for i, name in enumerate(names or ["-"]):
            v = m.get(name)
            ci = m.get(f"{name}_ci")
            rows.append([task if i == 0 else "", name, "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else v,
                         f"{m[name + '_stderr']:.4f}" if m.get(f"{name}_stderr") is not None else "",
                         f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "",
                         m["samples"] if i == 0 else "",
                         f"{m['failed']} ({m['failure_rate']:.1%})" if i == 0 else ""])
    return tabulate(rows, headers=["task", "metric", "value", "stderr", "95% CI", "samples", "failed"])
