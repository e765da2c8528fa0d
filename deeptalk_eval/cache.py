"""The response cache: what makes resume and re-runs free.

One SQLite file per model in the output folder (`<output-dir>/.cache/<model>.sqlite`, WAL
mode), committed after every sample, so a run killed at any point keeps every response it
finished. Audio goes beside the database as content-addressed `.npz` files. The key is
sha256(model fingerprint, task content hash, sample id, request content, generation options);
responses of non-deterministic requests (sampling without a seed) are never cached.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from deeptalk_eval.api import Audio, Request, Response


def audio_sha256(audio: Audio) -> str:
    """sha256 over the sample rate and the float32 samples: the one audio hash of the harness
    (response keys, cached audio file names and the shared transcript cache), so keys agree."""
    h = hashlib.sha256(str(audio.sample_rate).encode())
    h.update(np.ascontiguousarray(audio.samples, dtype=np.float32).tobytes())
    return h.hexdigest()


def open_shared_sqlite(path: str | Path, schema: str, timeout: float = 60.0,
                       check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection in WAL mode with `schema` created, safe while other processes open the same
    file. Switching to WAL needs a lock that SQLite does not wait for when another process is
    creating the file at that moment ("database is locked" at once, busy timeout or not), so
    the set-up is retried until `timeout`."""
    db = sqlite3.connect(str(path), timeout=timeout, check_same_thread=check_same_thread)
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a committed row survives the process being killed (not a power cut)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(schema)
            db.commit()
            return db
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                db.close()
                raise
            db.rollback()
            time.sleep(0.05)


def request_key(fingerprint: str, task_sha256: str, request: Request) -> str:
    content = {
        "model": fingerprint,
        "task": task_sha256,
        "id": request.id,
        "text": request.text,
        "audio": audio_sha256(request.audio) if request.audio is not None else None,
        "system": request.system,
        "output": request.output_modality,
        "options": request.options.to_dict(),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def to_plain(x: Any) -> Any:
    """json.dumps fallback: numpy scalars and arrays from adapters become plain values."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def response_to_dict(r: Response) -> dict[str, Any]:
    return {"text": r.text, "timings": r.timings, "tokens": r.tokens, "prompt": r.prompt, "extra": r.extra}


class ResponseCache:
    """Sample key -> Response or failure, persisted after every `put`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.audio_dir = self.path.with_suffix(".audio")
        self.db = open_shared_sqlite(
            self.path, "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, task TEXT, sample_id TEXT,"
            " response TEXT, audio TEXT, error TEXT, created REAL DEFAULT (julianday('now')))")

    def get(self, key: str) -> tuple[Response | None, str | None] | None:
        """(response, None) or (None, error) when cached; None when not."""
        row = self.db.execute("SELECT response, audio, error FROM responses WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        payload, audio_name, error = row
        if error is not None:
            return None, error
        d = json.loads(payload)
        audio = None
        if audio_name:
            f = self.audio_dir / audio_name
            if not f.is_file():
                return None  # audio lost: treat as a miss and generate again
            with np.load(f) as z:
                audio = Audio(z["samples"], int(z["sample_rate"]))
            if audio_sha256(audio) != Path(audio_name).stem:
                return None  # corrupted file
        return Response(text=d["text"], audio=audio, timings=d["timings"], tokens=d["tokens"],
                        prompt=d["prompt"], extra=d["extra"]), None

    def put(self, key: str, task: str, sample_id: str, response: Response | None, error: str | None) -> None:
        audio_name = None
        if response is not None and response.audio is not None:
            sha = audio_sha256(response.audio)
            audio_name = f"{sha}.npz"
            f = self.audio_dir / audio_name
            if not f.is_file():
                # Audio first, row second: a row never points at a missing file.
                self.audio_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.audio_dir / f"{sha}.tmp.npz"
                np.savez(tmp, samples=response.audio.samples, sample_rate=response.audio.sample_rate)
                tmp.replace(f)
        payload = json.dumps(response_to_dict(response), default=to_plain) if response is not None else None
        self.db.execute("INSERT OR REPLACE INTO responses (key, task, sample_id, response, audio, error)"
                        " VALUES (?, ?, ?, ?, ?, ?)", (key, task, sample_id, payload, audio_name, error))
        self.db.commit()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self.db.close()
