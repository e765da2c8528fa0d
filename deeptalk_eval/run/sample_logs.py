"""Per-sample records' inputs and outputs, as logged (with --log-samples also their audio as
wav files), and the responses read back from such a log (for rescoring)."""
from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from deeptalk_eval.api import Audio, Request, Response
from deeptalk_eval.audio_files import read_wav_checked, write_wav
from deeptalk_eval.errors import UsageError
from deeptalk_eval.results import safe_name
from deeptalk_eval.run.options import RunOptions
from deeptalk_eval.task_config import TaskConfig


def audio_entry(audio: Audio | None, path: Path | None, run_dir: Path | None) -> dict[str, Any] | None:
    if audio is None:
        return None
    entry: dict[str, Any] = {"sample_rate": audio.sample_rate, "duration": audio.duration}
    if path is not None:
        entry["sha256"] = write_wav(path, audio)
        entry["path"] = str(path.relative_to(run_dir.parent))  # relative to the results file's folder
    return entry


def fill_logs(task: TaskConfig, records: list[dict[str, Any]], requests: dict[str, Request],
              responses: dict[str, Response | None], opts: RunOptions, run_dir: Path | None) -> None:
    """Inputs and outputs of every record; with --log-samples also their audio as wav files."""
    audio_dir = run_dir / "audio" / safe_name(task.name) if (opts.log_samples and run_dir) else None
    for rec in records:
        req, resp = requests.get(rec["id"]), responses.get(rec["id"])
        stem = f"{safe_name(rec['id'])[:60]}-{hashlib.sha256(rec['id'].encode()).hexdigest()[:8]}"
        rec["input"] = None if req is None else {
            "text": req.text, "system": req.system, "output_modality": req.output_modality,
            "options": req.options.to_dict(),
            "audio": audio_entry(req.audio, audio_dir / f"{stem}.in.wav" if audio_dir else None, run_dir)}
        rec["output"] = None if resp is None else {
            "text": resp.text, "prompt": resp.prompt, "timings": resp.timings, "tokens": resp.tokens,
            "extra": resp.extra,
            "audio": audio_entry(resp.audio, audio_dir / f"{stem}.out.wav" if audio_dir else None, run_dir)}


def logged_responses(records: list[dict[str, Any]], base: Path,
                     without_audio: Collection[str] = frozenset()) -> dict[str, Response | None]:
    """Sample id -> the response its record logged (None for a failed sample); `base` is the
    folder the records' audio paths are relative to. Samples in `without_audio` are scored
    from a transcript kept in their record: their response has no audio."""
    responses: dict[str, Response | None] = {}
    for rec in records:
        out = rec.get("output")
        if out is None:
            responses[rec["id"]] = None
            continue
        audio = None
        if out.get("audio") and rec["id"] not in without_audio:
            if "path" not in out["audio"]:
                raise UsageError(f"sample {rec['id']!r}: the log has no audio file (run with --log-samples)")
            audio = read_wav_checked(base / out["audio"]["path"], out["audio"].get("sha256"))
        responses[rec["id"]] = Response(text=out.get("text"), audio=audio, timings=out.get("timings") or {},
                                        tokens=out.get("tokens") or {}, prompt=out.get("prompt"),
                                        extra=out.get("extra") or {})
    return responses
