"""The evaluation loop: task -> requests -> model (cached) -> scorers -> metrics -> results.

`prepare()` checks everything a run needs before anything runs (names, `--model-args`,
task files, data files, scorer names, output folder) and raises `UsageError` (or its
subclass `TaskConfigError`) for the CLI's exit status 2. `run()` builds the model, lets it
check its own set-up (`SpokenModel.check_setup`, e.g. a model server that is not running)
and then evaluates task by task:

- every sample's response (or failure) is committed to the response cache as soon as it
  exists, so a killed run started again with the same command redoes nothing it finished;
- an adapter that raises fails only its samples (a failing batch is retried one by one to
  find the culprit); failures are recorded with their error and counted per task, and the
  first one's traceback is printed. A `UsageError` from the adapter (a set-up mistake that
  every sample would repeat) stops the run instead;
- a model lacking a capability a task needs skips that task, said out loud in the results;
- speech-channel scorers read Whisper transcripts (`scoring.asr`), loaded only when needed;
  model-independent work (TTS clips, transcripts) comes from the shared cache
  (`shared_cache`) and each task records how much of it was read or computed;
- after each task, `<run folder>/progress.json` holds the finished tasks' metrics and wall
  times (`run.finished` false), so a run killed hours in keeps what it measured; the final
  results file replaces it.
"""
from __future__ import annotations

import hashlib
import os
import random
import sys
import textwrap
import time
import traceback
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from deeptalk_eval import shared_cache
from deeptalk_eval.aggregate import aggregate_task
from deeptalk_eval.api import Audio, Request, Response, SpokenModel, UnsupportedRequest
from deeptalk_eval.cache import ResponseCache, request_key
from deeptalk_eval.errors import UsageError
from deeptalk_eval.model_args import bind_model_args
from deeptalk_eval.registry import TaskIndex, model_class
from deeptalk_eval.results import (
    environment, json_safe_doc, read_results, read_samples, read_wav_checked, safe_name, timestamp,
    write_results, write_samples, write_wav,
)
from deeptalk_eval.scoring import latency as _latency_scorers  # noqa: F401  registers "latency"
from deeptalk_eval.scoring.base import SampleView, ScoringContext, get_scorer
from deeptalk_eval.taskconfig import (
    MetricSpec, SampleInputError, TaskConfig, TaskConfigError, build_request, config_sha256, load_docs,
    sample_id,
)


# lm-eval response caches live per model fingerprint and this version (bump when what an
# adapter answers to an lm-eval request changes)
LM_EVAL_CACHE_VERSION = 2
# in the run folder while a run goes on: the finished tasks (results format, run.finished false)
PROGRESS_FILE = "progress.json"


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
    progress: bool = True
    shared_cache: bool = True  # False (--no-shared-cache): transcripts computed, not stored
    judge: str | None = None  # --judge: the LLM judge of judged scorers (scoring.judge)

    @property
    def uses_shared_cache(self) -> bool:
        return shared_cache.enabled(no_shared_cache=not self.shared_cache)

    @property
    def model_label(self) -> str:
        if self.model:
            return self.model
        return self.model_path.rpartition(":")[2] if self.model_path else "model"


@dataclass
class Plan:
    """What `prepare` found: the tasks with their docs, and the adapter class."""

    options: RunOptions
    tasks: list[TaskConfig]
    docs: dict[str, list[dict[str, Any]]]
    model_cls: type
    index: TaskIndex


# -- small helpers --------------------------------------------------------------------


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:  # seeding torch is only needed once something loaded it
        sys.modules["torch"].manual_seed(seed)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    i, sep, n = text.partition("/")
    try:
        shard = (int(i), int(n))
    except ValueError:
        shard = None
    if not sep or shard is None or not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise UsageError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return shard


def shard_from_env() -> tuple[int, int] | None:
    """Under `accelerate launch` / torchrun every process is one shard (RANK of WORLD_SIZE)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else None


def shard_of(sid: str, n: int) -> int:
    """Deterministic shard of a sample id: independent of order, batch size and machine."""
    return int(hashlib.sha256(sid.encode()).hexdigest()[:16], 16) % n


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"output directory {folder} is not writable: {e.strerror or e}") from None


def online_only(task: TaskConfig, opts: RunOptions) -> bool:
    """A task whose data exists only on a hub, in an offline run: skipped, and said so."""
    return task.data_path is None and task.hub is not None and not opts.online


def missing_capability(task: TaskConfig, model_cls: type) -> str | None:
    caps = model_cls.capabilities
    if task.kind == "lm_eval":
        return None if caps.loglikelihood else "loglikelihood"
    if task.kind == "stream" and not caps.streaming:
        return "streaming"
    if task.input_modality == "speech" and not caps.audio_in:
        return "audio_in"
    if task.input_modality == "text" and not caps.text_in:
        return "text_in"
    if task.output in ("text", "both") and not caps.text_out:
        return "text_out"
    if task.output in ("speech", "both") and not caps.audio_out:
        return "audio_out"
    return None


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


# -- preparation (everything that can exit 2 happens here) ----------------------------


def prepare(opts: RunOptions) -> Plan:
    if opts.batch_size is not None and opts.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {opts.batch_size}")
    if opts.limit is not None and opts.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {opts.limit}")
    model_cls = model_class(opts.model, opts.model_path)
    opts = replace(opts, model_args=bind_model_args(model_cls, opts.model_args, opts.model_label))
    index = TaskIndex.scan(opts.include_paths)
    tasks = [index.load(name) for name in index.resolve(opts.tasks)]
    docs: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        for spec in task.scorers:
            try:
                get_scorer(spec.name)
            except KeyError as e:
                i = task.scorers.index(spec)
                raise TaskConfigError(f"{task.path}: field 'scorers[{i}].name': {e.args[0]}") from None
        if task.kind != "lm_eval" and not online_only(task, opts):
            preflight_scorers(task, opts)  # e.g. no judge named: said before any data is downloaded
    for task in tasks:
        if task.kind != "lm_eval" and not online_only(task, opts):
            docs[task.name] = load_docs(task, online=opts.online)
    check_writable(opts.output_dir / safe_name(opts.model_label))
    return Plan(opts, tasks, docs, model_cls, index)


def preflight_scorers(task: TaskConfig, opts: RunOptions) -> None:
    """Scorers that need something from the user (an LLM judge) say so before the run."""
    for i, spec in enumerate(task.scorers):
        check = getattr(get_scorer(spec.name), "preflight", None)
        if check is not None:
            try:
                check(spec.args, opts.judge)
            except UsageError as e:
                raise UsageError(f"{task.path}: task {task.name!r}, scorer {spec.name} (scorers[{i}]): {e}") from None


# -- generation -----------------------------------------------------------------------


class Generator:
    """Runs requests through the model with the cache in front of it."""

    def __init__(self, model: SpokenModel, cache: ResponseCache, opts: RunOptions):
        self.model, self.cache, self.opts = model, cache, opts
        self.fingerprint = model.fingerprint()
        self.measurement = ""  # id of the current measurement (keys streamed responses)
        self.model_calls = 0  # requests actually sent to the model (not cache hits)
        self.batch_sizes: dict[str, int] = {}  # the batch each task's model calls used (recorded)
        # where the first adapter error of the current task came from, for the user to read
        self.first_traceback: str | None = None

    def _check(self, resp: Any, req: Request) -> Response:
        if not isinstance(resp, Response):
            raise TypeError(f"adapter returned {type(resp).__name__}, not a Response")
        if resp.audio is not None and not np.isfinite(resp.audio.samples).all():
            raise ValueError("adapter returned audio containing NaN or inf")
        resp.extra.setdefault("request_index", self.model_calls)
        self.model_calls += 1
        return resp

    def _one(self, task: TaskConfig, req: Request) -> tuple[Response | None, str | None]:
        try:
            if task.kind == "stream":
                from deeptalk_eval.scoring.latency import record_stream

                start = time.monotonic()  # the clock starts when the request is handed over
                return self._check(record_stream(self.model.stream(req), start), req), None
            out = self.model.generate([req])
            if len(out) != 1:
                raise ValueError(f"adapter returned {len(out)} responses for 1 request")
            return self._check(out[0], req), None
        except UsageError:
            raise  # a set-up mistake: every other sample would fail the same way
        except Exception as e:  # any other adapter error fails this sample only
            self.model_calls += 1
            if self.first_traceback is None and not isinstance(e, UnsupportedRequest):
                self.first_traceback = traceback.format_exc()  # a refusal is no bug: no traceback
            return None, error_text(e)

    def batch_size(self, task: TaskConfig, requests: list[Request]) -> int:
        """--batch-size when given; otherwise the model's greedy batch when every request is
        greedy (the adapter vouches that batched greedy answers equal one-by-one ones), else 1."""
        if task.kind == "stream":
            return 1  # latency is timed one request at a time
        if self.opts.batch_size is not None:
            return self.opts.batch_size
        greedy = all(r.options.is_deterministic for r in requests)
        return max(1, int(getattr(self.model, "greedy_batch_size", 1))) if greedy else 1

    def run(self, task: TaskConfig, pending: list[tuple[str, Request]], bar: tqdm):
        """Yield (key, response, error) per request, committing each to the cache first."""
        size = self.batch_sizes[task.name] = self.batch_size(task, [req for _, req in pending])
        for b in range(0, len(pending), size):
            batch = pending[b:b + size]
            results: list[tuple[Response | None, str | None]]
            if len(batch) == 1:
                results = [self._one(task, batch[0][1])]
            else:
                try:
                    out = self.model.generate([req for _, req in batch])
                    if len(out) != len(batch):
                        raise ValueError(f"adapter returned {len(out)} responses for {len(batch)} requests")
                    results = []
                    for resp, (_, req) in zip(out, batch):
                        try:
                            results.append((self._check(resp, req), None))
                        except (TypeError, ValueError) as e:
                            results.append((None, error_text(e)))
                except Exception:
                    # Find the failing sample(s): one by one.
                    results = [self._one(task, req) for _, req in batch]
            for (key, req), (resp, err) in zip(batch, results):
                if req.options.is_deterministic:  # sampled outputs are never cached
                    self.cache.put(key, task.name, req.id, resp, err)
                bar.update(1)
                yield key, resp, err


# -- scoring --------------------------------------------------------------------------


class Scoring:
    """Scorers of a task over sample records; the ASR transcriber is made on first need."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self._transcriber = None

    def transcriber(self):
        if self._transcriber is None:
            from deeptalk_eval.scoring.asr import make_transcriber

            backend, sep, name = self.opts.asr.rpartition(":")
            config = {"model": name, "device": self.opts.device, "cache": self.opts.uses_shared_cache}
            if sep:
                config["backend"] = backend
            if self.opts.asr_batch_size is not None:
                config["batch_size"] = self.opts.asr_batch_size
            self._transcriber = make_transcriber(config)
        return self._transcriber

    def cache_counts(self) -> dict[str, int]:
        """Running totals of shared-cache reads and computations (TTS, transcripts)."""
        return shared_cache.counts(self._transcriber)

    def score(self, task: TaskConfig, records: list[dict[str, Any]],
              responses: dict[str, Response | None]) -> dict[str, Any]:
        """Fill record["metrics"] / ["transcripts"]; returns the scorers' shared info."""
        ctx = ScoringContext(task_config=task.raw, judge=self.opts.judge)

        def transcribe(audio, id=None):
            # Any scorer may need ASR (e.g. the noise floor transcribes gold-answer speech):
            # it gets the run's --asr model, loaded on first use and recorded in the results.
            t = self.transcriber()
            ctx.info.setdefault("asr", t.info)
            return t(audio, id=id)

        ctx.transcribe = transcribe
        if task.needs_asr:
            ctx.info["asr"] = self.transcriber().info
        fns = [(spec, get_scorer(spec.name)) for spec in task.scorers]
        # A failed sample counts as its metrics' on_failure says, whatever a scorer makes of
        # it; only ratio denominators (e.g. reference word counts) are kept to weigh it.
        denominators = {m.denominator for m in task.metrics if m.aggregation == "ratio"}
        if any(spec.channel == "speech" for spec, _ in fns):
            self._transcribe_speech(records, responses, ctx)
        for rec in records:
            resp = responses.get(rec["id"])
            rec.setdefault("transcripts", {})
            metrics: dict[str, float | None] = {}
            for spec, fn in fns:
                if spec.channel == "speech":
                    if resp is not None and "speech" not in rec["transcripts"]:
                        rec["transcripts"]["speech"] = ctx.transcribe(resp.audio, id=rec["id"])
                    channel_text = rec["transcripts"].get("speech")
                else:
                    channel_text = resp.text if resp is not None else None
                view = SampleView(doc=rec["doc"], response=resp, channel=spec.channel,
                                  channel_text=channel_text, error=rec.get("error"))
                try:
                    values = fn(view, ctx, **spec.args)
                except Exception as e:
                    values = {}
                    if not rec.get("error"):
                        rec["error"] = f"scorer {spec.name}: {error_text(e)}"
                        rec["error_stage"] = "scoring"
                for k, v in (values or {}).items():
                    metrics[spec.prefix + k] = None if v is None else float(v)
            if rec.get("error"):
                metrics = {k: (v if k in denominators else None) for k, v in metrics.items()}
            rec["metrics"] = metrics
        return ctx.info

    def _transcribe_speech(self, records: list[dict[str, Any]], responses: dict[str, Response | None],
                           ctx: ScoringContext) -> None:
        """The task's spoken outputs transcribed together before the scorers run: cached
        transcripts read first, the misses decoded in batches (`Transcriber.transcribe_many`).
        Audio that cannot be transcribed (NaN ...) is left to the per-sample path, which
        reports it as before."""
        todo = [rec for rec in records
                if responses.get(rec["id"]) is not None and "speech" not in rec.setdefault("transcripts", {})]
        if not todo:
            return
        t = self.transcriber()
        ctx.info.setdefault("asr", t.info)
        texts = t.transcribe_many([responses[rec["id"]].audio for rec in todo], ids=[rec["id"] for rec in todo],
                                  progress=self.opts.progress, skip_invalid=True)
        for rec, text in zip(todo, texts):
            if text is not None:
                rec["transcripts"]["speech"] = text


# -- one task -------------------------------------------------------------------------


@dataclass
class TaskOutcome:
    name: str
    status: str  # "ok" | "skipped: ..." | "error: ..."
    metrics: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    model_calls: int = 0
    cache_hits: int = 0
    first_traceback: str | None = None  # of the first sample the adapter failed on
    shared_cache: dict[str, int] = field(default_factory=dict)  # what came from it, what was computed


def select_docs(docs: list[dict[str, Any]], task: TaskConfig, opts: RunOptions) -> list[tuple[int, dict]]:
    """(index, doc) after --limit, then --shard: shards of a limited run add up to it."""
    chosen = list(enumerate(docs))[: opts.limit] if opts.limit else list(enumerate(docs))
    if opts.shard:
        i, n = opts.shard
        chosen = [(k, d) for k, d in chosen if shard_of(sample_id(task, d), n) == i]
    return chosen


def audio_entry(audio: Audio | None, path: Path | None, run_dir: Path | None) -> dict[str, Any] | None:
    if audio is None:
        return None
    entry: dict[str, Any] = {"sample_rate": audio.sample_rate, "duration": audio.duration}
    if path is not None:
        entry["sha256"] = write_wav(path, audio)
        entry["path"] = str(path.relative_to(run_dir.parent))  # relative to the results file's folder
    return entry


def run_generate_task(task: TaskConfig, docs: list[dict[str, Any]], gen: Generator, scoring: Scoring,
                      opts: RunOptions, run_dir: Path | None) -> TaskOutcome:
    chosen = select_docs(docs, task, opts)
    counts_before = scoring.cache_counts()  # spoken inputs are synthesised from here on
    records: list[dict[str, Any]] = []
    requests: dict[str, Request] = {}
    for idx, doc in chosen:
        sid = sample_id(task, doc)
        rec = {"index": idx, "id": sid, "doc": json_safe_doc(doc), "error": None, "error_stage": None}
        try:
            requests[sid] = build_request(task, doc)
        except SampleInputError as e:
            rec["error"], rec["error_stage"] = str(e), "input"
        records.append(rec)

    responses: dict[str, Response | None] = {}
    errors: dict[str, str] = {}
    pending: list[tuple[str, Request]] = []
    hits = 0
    for rec in records:
        req = requests.get(rec["id"])
        if req is None:
            continue
        stream_id = f"|measurement:{gen.measurement}" if task.kind == "stream" else ""
        key = request_key(gen.fingerprint + stream_id, task.config_sha256, req)
        rec["cache_key"] = key
        got = gen.cache.get(key) if req.options.is_deterministic else None
        if got is not None and not (opts.retry_failed and got[1] is not None):
            responses[rec["id"]], err = got
            if err:
                errors[rec["id"]] = err
            rec["cached"] = True
            hits += 1
        else:
            pending.append((key, req))
            rec["cached"] = False
    set_seeds(opts.seed)  # the same seed before every task's generation
    calls_before = gen.model_calls
    gen.first_traceback = None
    with tqdm(total=len(records), initial=len(records) - len(pending), desc=task.name, unit="sample",
              disable=not opts.progress, file=sys.stderr) as bar:
        by_key = {key: req.id for key, req in pending}
        for key, resp, err in gen.run(task, pending, bar):
            responses[by_key[key]] = resp
            if err:
                errors[by_key[key]] = err
    for rec in records:
        if rec["id"] in errors:
            rec["error"], rec["error_stage"] = errors[rec["id"]], "model"

    info = scoring.score(task, records, responses)
    _fill_logs(task, records, requests, responses, opts, run_dir)
    return TaskOutcome(task.name, "ok", aggregate_task(task.metrics, records), records, info,
                       model_calls=gen.model_calls - calls_before, cache_hits=hits,
                       first_traceback=gen.first_traceback,
                       shared_cache=shared_cache.delta(counts_before, scoring.cache_counts()))


def _fill_logs(task: TaskConfig, records: list[dict[str, Any]], requests: dict[str, Request],
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


# -- the run --------------------------------------------------------------------------


def _results_skeleton(opts: RunOptions, plan_tasks: list[TaskConfig], index: TaskIndex) -> dict[str, Any]:
    names = [t.name for t in plan_tasks]
    groups = {g: [t for t in members if t in names] for g, members in index.all_groups().items()}
    return {
        "results": {},
        "groups": {g: m for g, m in groups.items() if m},
        "configs": {t.name: t.record() for t in plan_tasks},
        "versions": {t.name: t.version for t in plan_tasks},
        "config": {"model": opts.model_label, "model_args": opts.model_args, "model_path": opts.model_path,
                   "seed": opts.seed, "limit": opts.limit, "batch_size": opts.batch_size,
                   "shard": list(opts.shard) if opts.shard else None, "online": opts.online,
                   "asr": opts.asr, "device": opts.device, "shared_cache": opts.uses_shared_cache,
                   "judge": opts.judge},
        "environment": environment(),
        "asr": None,
        "model_info": {},
        "stage": opts.stage,
        "seed": opts.seed,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": {},
        "samples_files": {},
    }


@dataclass
class RunResult:
    results: dict[str, Any]
    path: Path
    exit_code: int
    outcomes: list[TaskOutcome]


def run(plan: Plan) -> RunResult:
    opts = plan.options
    set_seeds(opts.seed)
    model_dir = opts.output_dir / safe_name(opts.model_label)
    stamp = timestamp() + (f"_shard{opts.shard[0]}of{opts.shard[1]}" if opts.shard else "")
    run_dir = model_dir / stamp
    results = _results_skeleton(opts, plan.tasks, plan.index)
    t_start = time.monotonic()
    model = plan.model_cls(**opts.model_args)  # the arguments were checked against its signature
    try:
        model.check_setup()  # e.g. a model server that does not answer: stop before the first sample
    except BaseException:
        model.close()
        raise
    set_seeds(opts.seed)  # again: loading the model may have imported torch
    results["model_info"] = {"class": f"{plan.model_cls.__module__}.{plan.model_cls.__qualname__}",
                             "capabilities": plan.model_cls.capabilities.to_dict(),
                             "fingerprint": model.fingerprint(), **model.describe()}
    cache = ResponseCache(opts.output_dir / ".cache" / f"{safe_name(opts.model_label)}.sqlite")
    gen = Generator(model, cache, opts)
    # Streamed (latency) responses are cached under a measurement id that lives until this
    # command completes: a resumed run keeps what it measured before the kill, a new run of a
    # finished command measures again instead of replaying old timings.
    shard = f"_shard{opts.shard[0]}of{opts.shard[1]}" if opts.shard else ""
    measurement_file = cache.path.with_name(f"{cache.path.stem}{shard}.measurement")
    if not measurement_file.is_file():
        measurement_file.write_text(uuid.uuid4().hex)
    gen.measurement = measurement_file.read_text().strip()
    scoring = Scoring(opts)
    outcomes: list[TaskOutcome] = []
    # wall time per task (cache hits make a resumed task fast: see model_calls / cache_hits)
    seconds: dict[str, float] = {"model_load": round(time.monotonic() - t_start, 2)}
    try:
        # Streaming (latency) tasks first, so that their first request is the model's real cold start.
        for task in sorted(plan.tasks, key=lambda t: t.kind != "stream"):
            t_task = time.monotonic()
            missing = missing_capability(task, plan.model_cls)
            if online_only(task, opts):
                out = TaskOutcome(task.name, "skipped: online-only dataset (run with --online)")
            elif missing:
                out = TaskOutcome(task.name, f"skipped: capability {missing} missing")
            elif task.kind == "lm_eval":
                if opts.shard and opts.shard[0] != 0:
                    out = TaskOutcome(task.name, "skipped: lm_eval tasks run on shard 0 only")
                else:
                    out = _run_lm_eval(task, model, gen.fingerprint, opts)
            else:
                try:
                    out = run_generate_task(task, plan.docs[task.name], gen, scoring, opts, run_dir)
                except UsageError:
                    raise  # the adapter's set-up mistake: the CLI's one line, exit 2
                except Exception as e:  # one broken task must not take the others down
                    traceback.print_exc(file=sys.stderr)
                    out = TaskOutcome(task.name, f"error: {error_text(e)}")
            if out.status == "ok" and opts.log_samples and out.records:
                f = run_dir / f"samples_{safe_name(out.name)}.jsonl"  # written as each task ends
                write_samples(f, out.records)
                results["samples_files"][out.name] = str(f.relative_to(model_dir))
            outcomes.append(out)
            seconds[out.name] = round(time.monotonic() - t_task, 2)
            if task.name in gen.batch_sizes:
                results["config"].setdefault("batch_sizes", {})[task.name] = gen.batch_sizes[task.name]
            _report(out)
            # the finished tasks so far, readable if the run is killed before the end
            write_results(run_dir / PROGRESS_FILE, _filled(results, outcomes, seconds, t_start, finished=False))
    finally:
        cache.close()
        model.close()

    path = write_results(model_dir / f"{stamp}.json", _filled(results, outcomes, seconds, t_start, finished=True))
    (run_dir / PROGRESS_FILE).unlink(missing_ok=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
    measurement_file.unlink(missing_ok=True)
    return RunResult(results, path, _exit_code(outcomes), outcomes)


def _filled(results: dict[str, Any], outcomes: list[TaskOutcome], seconds: dict[str, float], t_start: float,
            finished: bool) -> dict[str, Any]:
    """`results` with the outcomes' statuses, metrics and timings entered."""
    for out in outcomes:
        results["status"][out.name] = out.status
        if out.status == "ok":
            results["results"][out.name] = out.metrics
            if out.info.get("asr"):
                results["asr"] = out.info["asr"]
            if {k: v for k, v in out.info.items() if k != "asr"}:
                results.setdefault("scoring_info", {})[out.name] = {k: v for k, v in out.info.items() if k != "asr"}
    results["run"] = {"model_calls": sum(o.model_calls for o in outcomes),
                      "cache_hits": sum(o.cache_hits for o in outcomes),
                      "seconds": {**seconds, "total": round(time.monotonic() - t_start, 2)},
                      "shared_cache": shared_cache_record(outcomes, results["config"].get("shared_cache")),
                      "finished": finished}
    return results


def shared_cache_record(outcomes: list[TaskOutcome], enabled: bool | None) -> dict[str, Any]:
    """Per task, how many TTS clips and transcripts came from the shared cache and how many
    were computed: a figure built on cached work says so."""
    from deeptalk.paths import cache_dir

    return {"dir": str(cache_dir()), "enabled": enabled,
            "tasks": {o.name: o.shared_cache for o in outcomes if any(o.shared_cache.values())}}


def _exit_code(outcomes: list[TaskOutcome]) -> int:
    """1 when some task failed entirely (an error, or every sample failed)."""
    for out in outcomes:
        if out.status.startswith("error"):
            return 1
        if out.status == "ok" and out.metrics.get("samples") and out.metrics["failed"] == out.metrics["samples"]:
            return 1
    return 0


def _report(out: TaskOutcome) -> None:
    if out.status != "ok":
        print(f"[{out.name}] {out.status}", file=sys.stderr)
    elif out.metrics.get("failed"):
        m = out.metrics
        print(f"[{out.name}] {m['failed']}/{m['samples']} samples failed "
              f"(failure rate {m['failure_rate']:.1%}); errors are in the per-sample log", file=sys.stderr)
        for rec in out.records:
            if rec.get("error"):
                print(f"  {rec['id']}: {rec['error']}", file=sys.stderr)
                break
        if out.first_traceback:
            print(textwrap.indent(out.first_traceback.rstrip(), "  "), file=sys.stderr)


def _run_lm_eval(task: TaskConfig, model: SpokenModel, fingerprint: str, opts: RunOptions) -> TaskOutcome:
    from deeptalk_eval.lm_bridge import run_lm_eval

    # v2: adapters feed lm-eval contexts untemplated (raw_prompt); v1 caches hold templated answers
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    cache_prefix = opts.output_dir / ".cache" / f"lm_eval_v{LM_EVAL_CACHE_VERSION}_{key}"
    try:
        metrics, records, info = run_lm_eval(task, model, seed=opts.seed, limit=opts.limit,
                                             cache_path=str(cache_prefix))
    except UsageError:
        raise  # the adapter's set-up mistake: the CLI's one line, exit 2
    except Exception as e:
        return TaskOutcome(task.name, f"error: lm-eval: {error_text(e)}")
    return TaskOutcome(task.name, "ok", metrics, records, info)


# -- rescore and merge ----------------------------------------------------------------


def _records_with_responses(records: list[dict[str, Any]], base: Path) -> dict[str, Response | None]:
    responses: dict[str, Response | None] = {}
    for rec in records:
        out = rec.get("output")
        if out is None:
            responses[rec["id"]] = None
            continue
        audio = None
        if out.get("audio"):
            if "path" not in out["audio"]:
                raise UsageError(f"sample {rec['id']!r}: the log has no audio file (run with --log-samples)")
            audio = read_wav_checked(base / out["audio"]["path"], out["audio"].get("sha256"))
        responses[rec["id"]] = Response(text=out.get("text"), audio=audio, timings=out.get("timings") or {},
                                        tokens=out.get("tokens") or {}, prompt=out.get("prompt"),
                                        extra=out.get("extra") or {})
    return responses


def rescore(source: str | Path, opts: RunOptions) -> RunResult:
    """New metrics from a run's per-sample logs with the current task files; no model is loaded."""
    old = read_results(source)
    old_path = Path(old["_path"])
    base = old_path.parent
    if not old.get("samples_files"):
        raise UsageError(f"{old_path}: no per-sample logs to rescore (run with --log-samples)")
    index = TaskIndex.scan(opts.include_paths)
    label = old["config"]["model"]
    opts.model = label
    model_dir = opts.output_dir / safe_name(label)
    check_writable(model_dir)
    tasks = []
    for name in old["samples_files"]:
        if name not in index.files:
            raise UsageError(f"task {name!r} of {old_path} is not known here (use --include-path)")
        tasks.append(index.load(name))
        if tasks[-1].kind != "lm_eval":
            preflight_scorers(tasks[-1], opts)
    results = {k: v for k, v in old.items() if k != "_path"}
    results.update({"results": {}, "configs": {t.name: t.record() for t in tasks}, "environment": environment(),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "samples_files": {},
                    "rescored_from": str(old_path), "stage": opts.stage or old.get("stage")})
    scoring = Scoring(opts)
    stamp = timestamp() + "_rescored"
    run_dir = model_dir / stamp
    outcomes = []
    for task in tasks:
        if task.kind == "lm_eval":  # lm-eval scored these itself: carried over unchanged
            results["results"][task.name] = old["results"].get(task.name, {})
            results["status"][task.name] = "ok (lm-eval figures carried over, not rescored)"
            continue
        records = read_samples(base / old["samples_files"][task.name])
        for rec in records:  # model and input failures stay; scoring failures are retried
            if rec.get("error_stage") == "scoring":
                rec["error"], rec["error_stage"] = None, None
            rec["transcripts"] = {}
        responses = _records_with_responses(records, base)
        counts_before = scoring.cache_counts()
        info = scoring.score(task, records, responses)
        for rec in records:  # audio paths stay valid from the new run folder
            for part in ("input", "output"):
                a = (rec.get(part) or {}).get("audio")
                if a and "path" in a:
                    a["path"] = os.path.relpath(base / a["path"], model_dir)
        if task.metrics:
            out = TaskOutcome(task.name, "ok", aggregate_task(task.metrics, records), records, info)
        else:
            out = TaskOutcome(task.name, "error: task has no metrics")
        out.shared_cache = shared_cache.delta(counts_before, scoring.cache_counts())
        outcomes.append(out)
        results["status"][task.name] = out.status
        results["results"][task.name] = out.metrics
        if info.get("asr"):
            results["asr"] = info["asr"]
        # what scored these figures (normalisers, judge ...) is this rescore's, not the old run's
        scoring_info = results.setdefault("scoring_info", {})
        scoring_info.pop(task.name, None)
        if {k: v for k, v in info.items() if k != "asr"}:
            scoring_info[task.name] = {k: v for k, v in info.items() if k != "asr"}
        f = run_dir / f"samples_{safe_name(task.name)}.jsonl"
        write_samples(f, records)
        results["samples_files"][task.name] = str(f.relative_to(model_dir))
    # the old run's model figures stay; what scoring read from the shared cache is this rescore's
    results["config"] = {**results.get("config", {}), "shared_cache": opts.uses_shared_cache}
    results["run"] = {**results.get("run", {}),
                      "shared_cache": shared_cache_record(outcomes, opts.uses_shared_cache)}
    path = write_results(model_dir / f"{stamp}.json", results)
    return RunResult(results, path, _exit_code(outcomes), outcomes)


def merge(out_path: str | Path, inputs: list[str | Path]) -> RunResult:
    """Combine the results of shard runs (with their sample logs) into one results file."""
    parts = [read_results(p) for p in inputs]
    if len(parts) < 1:
        raise UsageError("merge needs at least one input results file")
    first = parts[0]
    shards = [tuple(p["config"].get("shard") or (0, 1)) for p in parts]
    n = {s[1] for s in shards}
    if len(n) != 1 or sorted(s[0] for s in shards) != list(range(next(iter(n)))):
        raise UsageError(f"merge: inputs are shards {shards}; need each of 0..n-1 exactly once")
    for p in parts[1:]:
        for key in ("model", "model_args", "seed", "limit"):
            if p["config"].get(key) != first["config"].get(key):
                raise UsageError(f"merge: {p['_path']} has {key}={p['config'].get(key)!r}, "
                                 f"{first['_path']} has {first['config'].get(key)!r}")
        for t, c in p["configs"].items():
            # hashed from the recorded fields, so results files older than `config_sha256` compare too
            if t in first["configs"] and config_sha256(c["config"]) != config_sha256(
                    first["configs"][t]["config"]):
                raise UsageError(f"merge: task {t!r} differs between {first['_path']} and {p['_path']}")
    out_path = Path(out_path)
    if out_path.suffix != ".json":
        out_path = out_path / safe_name(first["config"]["model"]) / f"{timestamp()}_merged.json"
    check_writable(out_path.parent)
    merged = {k: v for k, v in first.items() if k != "_path"}
    merged.update({"results": {}, "samples_files": {}, "status": {}, "merged_from": [p["_path"] for p in parts]})
    merged["config"] = dict(first["config"], shard=None)
    merged["configs"] = {t: c for p in parts for t, c in p["configs"].items()}
    runs = [p.get("run") or {} for p in parts]
    merged["run"] = {"model_calls": sum(r.get("model_calls", 0) for r in runs),
                     "cache_hits": sum(r.get("cache_hits", 0) for r in runs),
                     "shard_seconds": [r.get("seconds") for r in runs],  # shards run side by side
                     "shard_shared_cache": [r.get("shared_cache") for r in runs]}
    run_dir = out_path.with_suffix("")
    tasks = list(dict.fromkeys(t for p in parts for t in p["configs"]))
    for t in tasks:
        statuses = [p["status"].get(t) for p in parts if t in p.get("status", {})]
        logged = [p for p in parts if t in p.get("samples_files", {})]
        if not logged:
            # lm_eval tasks run whole on shard 0; anything else without logs cannot be merged.
            done = [p for p in parts if t in p["results"]]
            if done and all(s.startswith("skipped") or s == "ok" for s in statuses):
                merged["results"][t] = done[0]["results"][t]
                merged["status"][t] = "ok"
            else:
                merged["status"][t] = next((s for s in statuses if s != "ok"), "error: no sample logs to merge")
            continue
        records, seen = [], {}
        for p in logged:
            base = Path(p["_path"]).parent
            for rec in read_samples(base / p["samples_files"][t]):
                if rec["id"] in seen:
                    raise UsageError(f"merge: task {t!r} sample {rec['id']!r} is in both {seen[rec['id']]} "
                                     f"and {p['_path']}")
                seen[rec["id"]] = p["_path"]
                for part in ("input", "output"):
                    a = (rec.get(part) or {}).get("audio")
                    if a and "path" in a:
                        a["path"] = os.path.relpath(base / a["path"], out_path.parent)
                records.append(rec)
        records.sort(key=lambda r: r["index"])  # the unsharded order: same bootstrap, same figures
        specs = [MetricSpec(**m) for m in (merged["configs"][t]["config"].get("metrics") or [])]
        merged["results"][t] = aggregate_task(specs, records)
        merged["status"][t] = "ok"
        f = run_dir / f"samples_{safe_name(t)}.jsonl"
        write_samples(f, records)
        merged["samples_files"][t] = str(f.relative_to(out_path.parent))
    path = write_results(out_path, merged)
    code = 1 if any(s.startswith("error") for s in merged["status"].values()) else 0
    return RunResult(merged, path, code, [])


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
