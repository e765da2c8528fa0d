"""What a run is asked to do (the command line's options), and the output folder's check."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deeptalk_eval import shared_cache
from deeptalk_eval.errors import UsageError


@dataclass
class RunOptions:
    model: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    model_path: str | None = None
    tasks: str = "all"
    include_paths: list[str] = field(default_factory=list)
    limit: int | None = None
    seed: int = 1234
    output_dir: Path = Path("results")
    log_samples: bool = False
    batch_size: int | None = None  # None: the model's `greedy_batch_size` for greedy tasks, else 1
    shard: tuple[int, int] | None = None
    stage: str | None = None
    online: bool = False
    asr: str = "tiny.en"
    asr_batch_size: int | None = None  # --asr-batch-size: None = the ASR config's default
    device: str = "cpu"
    retry_failed: bool = False
    remeasure_latency: bool = False  # streamed timings measured afresh, not replayed (run/measurement.py)
    progress: bool = True
    shared_cache: bool = True  # False (--no-shared-cache): transcripts computed, not stored
    judge: str | None = None  # --judge: the LLM judge of judged scorers (scoring.judge)
    # set by `--processes` for its child runs: the results file's time stamp, and whether
    # this run takes only the streaming (latency) tasks ("only") or all but them ("skip")
    stamp: str | None = None
    stream_tasks: str | None = None
    # a worker of `--processes`: the queue of parts it takes its share from (run/work_queue.py);
    # in each part, the lm_eval tasks that part runs whole (None: dealt by `lm_eval_shard`)
    work_queue: Path | None = None
    lm_eval_tasks: tuple[str, ...] | None = None

    @property
    def uses_shared_cache(self) -> bool:
        return shared_cache.enabled(no_shared_cache=not self.shared_cache)

    @property
    def model_label(self) -> str:
        if self.model:
            return self.model
        return self.model_path.rpartition(":")[2] if self.model_path else "model"


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"output directory {folder} is not writable: {e.strerror or e}") from None
