"""`deeptalk-eval`: run (default), list, validate, merge, leaderboard, regress.

Exit status: 0 ok; 1 the run finished but some task failed entirely (or a regression
gate broke); 2 a user mistake (unknown names, bad arguments, malformed task or data files,
an output folder that cannot be written, a model server that does not answer), said in one
line. `main` is the one place where such a mistake (`deeptalk_eval.errors.UsageError`)
becomes that line; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deeptalk_eval.errors import UsageError
from deeptalk_eval.task_yaml import TaskConfigError

SUBCOMMANDS = ("run", "list", "validate", "merge", "leaderboard", "regress")
# what argv may start with other than a subcommand without meaning `run`
TOP_LEVEL_FLAGS = ("-h", "--help", "--version")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are UsageErrors: one line, not a usage screen. Options are
    spelled in full (no prefixes): `--processes` hands the command line on to its children."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def one_line(message: str) -> str:
    """A message that spans lines (several broken files, a library's error text) as one line."""
    return "; ".join(part.strip() for part in message.splitlines() if part.strip())


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("deeptalk-eval")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name (see `deeptalk-eval list models`)")
    p.add_argument("--model-args", default="",
                   help="k=v,k2=v2 passed to the adapter, each read by the type its constructor declares")
    p.add_argument("--model-path", help="your own adapter: module:Class or path/file.py:Class")
    p.add_argument("--tasks", default="all", help="all | comma-separated task names, groups or YAML files")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="another folder of task YAMLs (repeatable)")
    p.add_argument("--retention-tasks", metavar="NAMES",
                   help="lm-eval task names (comma list) added as text-retention tasks; most need --online")
    p.add_argument("--limit", type=int, help="first N samples of each task")
    p.add_argument("--seed", type=int, default=1234, help="python / numpy / torch seed (recorded)")
    p.add_argument("--output-dir", default="results", type=Path)
    p.add_argument("--log-samples", action="store_true", help="write per-sample JSONL and audio files")
    p.add_argument("--batch-size", type=int, default=None,
                   help="requests decoded together (default: the model's own batch for greedy requests, "
                        "e.g. 16 for deeptalk, whose batched greedy answers equal one-by-one ones; else 1)")
    p.add_argument("--shard", help="i/n: run only shard i of n (see `deeptalk-eval merge`)")
    p.add_argument("--stage", help="a training-stage tag recorded in results (e.g. stage2.1)")
    p.add_argument("--rescore", metavar="RESULTS", help="recompute metrics from a run's sample logs; no model")
    p.add_argument("--online", action="store_true", help="load hub datasets even when a local file exists")
    p.add_argument("--asr", default="tiny.en", help="Whisper for speech output: [backend:]model")
    p.add_argument("--asr-batch-size", type=_positive_int, default=None, metavar="N",
                   help="spoken outputs transcribed N at a time after the cache look-up (default: the ASR "
                        "default, see deeptalk_eval.scoring.asr; 1: one by one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--retry-failed", action="store_true", help="run again samples whose failure is cached")
    p.add_argument("--remeasure-latency", action="store_true",
                   help="time the streamed (latency) tasks afresh; by default a repeated command on the same "
                        "machine, code and settings replays its earlier timings from the cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--judge", metavar="SPEC",
                   help="LLM judge for judged tasks (VoiceBench's open-ended sets): openai:MODEL (an "
                        "OpenAI-compatible server, DEEPTALK_JUDGE_BASE_URL), hf:NAME_OR_PATH, or module:Class; "
                        "wins over a task's `judge:` scorer arg. None by default: such tasks refuse to run without one")
    p.add_argument("--processes", type=_positive_int, default=1, metavar="N",
                   help="spread the run over N local processes, each a shard of the samples on its share of the "
                        "cores, merged into one results file; streaming (latency) tasks then run alone on every "
                        "core (default 1; see docs/harness.md)")
    p.add_argument("--run-stamp", help=argparse.SUPPRESS)  # --processes' children: the results file's stamp
    p.add_argument("--stream-tasks", choices=["only", "skip"], help=argparse.SUPPRESS)  # and their share of tasks
    p.add_argument("--work-queue", type=Path, help=argparse.SUPPRESS)  # a --processes worker: its parts' queue
    p.add_argument("--no-shared-cache", action="store_true",
                   help="compute every transcript afresh and store none (also DEEPTALK_NO_SHARED_CACHE=1); "
                        "see docs/harness.md")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="deeptalk-eval", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="Without a command, `run` is meant: `deeptalk-eval --model deeptalk "
                      "--tasks all`. See `deeptalk-eval run --help` for its options.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command")
    add_run_arguments(sub.add_parser("run", help="evaluate a model on tasks (the default command)"))
    ls = sub.add_parser("list", help="list tasks, groups, models or scorers")
    ls.add_argument("what", choices=["tasks", "groups", "models", "scorers"])
    ls.add_argument("--include-path", action="append", default=[], metavar="DIR")
    val = sub.add_parser("validate", help="check a task file: schema, data, scorers, first prompt")
    val.add_argument("paths", nargs="+", type=Path)
    val.add_argument("--online", action="store_true")
    mg = sub.add_parser("merge", help="merge shard results into one results file")
    mg.add_argument("out", help="output results .json (or a folder: <folder>/<model>/<time>_merged.json)")
    mg.add_argument("inputs", nargs="+", help="the shard results files")
    for name in ("leaderboard", "regress"):
        sub.add_parser(name, help=f"see `deeptalk-eval {name} --help`", add_help=False)
    return p


def options_from_args(args: argparse.Namespace):
    from deeptalk_eval.model_args import parse_model_args
    from deeptalk_eval.run.options import RunOptions
    from deeptalk_eval.run.shards import parse_shard, shard_from_env

    return RunOptions(
        model=args.model, model_args=parse_model_args(args.model_args), model_path=args.model_path,
        tasks=args.tasks, include_paths=args.include_path, limit=args.limit, seed=args.seed,
        output_dir=args.output_dir, log_samples=args.log_samples or bool(args.shard) or shard_from_env() is not None,
        batch_size=args.batch_size, shard=parse_shard(args.shard) or shard_from_env(), stage=args.stage,
        online=args.online, asr=args.asr, asr_batch_size=args.asr_batch_size, device=args.device, retry_failed=args.retry_failed,
        remeasure_latency=args.remeasure_latency,
        progress=not args.no_progress, shared_cache=not args.no_shared_cache, judge=args.judge,
        stamp=args.run_stamp, stream_tasks=args.stream_tasks, work_queue=args.work_queue)


def offline_by_default(online: bool) -> None:
    """No hub access unless --online: every default runs from what packages ship."""
    if not online:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(var, "1")


def cmd_run(args: argparse.Namespace) -> int:
    from deeptalk_eval.run.loop import run, run_queue
    from deeptalk_eval.run.options import check_writable
    from deeptalk_eval.run.plan import prepare
    from deeptalk_eval.run.rescore import rescore
    from deeptalk_eval.run.summary_table import summary_table

    offline_by_default(args.online)
    if args.retention_tasks:
        from deeptalk_eval.retention_tasks import write_retention_tasks

        check_writable(args.output_dir)  # written to before `prepare` checks it
        folder = args.output_dir / ".retention_tasks"
        try:
            added = write_retention_tasks(args.retention_tasks, folder)
        except ValueError as e:
            raise UsageError(str(e)) from None
        args.include_path = [*args.include_path, str(folder)]
        if args.tasks.strip() != "all":
            args.tasks = ",".join([args.tasks, *added])

    opts = options_from_args(args)
    if args.rescore:
        result = rescore(args.rescore, opts)
    else:
        if not (args.model or args.model_path):
            raise UsageError("--model NAME or --model-path module:Class is required")
        plan = prepare(opts)  # everything that can be wrong with the input, before running
        if opts.work_queue is not None:  # a worker of `--processes`: the parent reports the whole
            parts = run_queue(plan)
            print("\n".join(f"results: {r.path}" for r in parts))
            return max((r.exit_code for r in parts), default=0)
        if args.processes > 1:
            if opts.shard:
                raise UsageError("--processes runs the shards itself: drop --shard (or WORLD_SIZE)")
            from deeptalk_eval.run.local_processes import run_in_processes, without_option

            streaming = any(t.kind == "stream" for t in plan.tasks)
            argv = args.argv
            if args.retention_tasks:  # written once, here: the children read them
                argv = [*without_option(without_option(argv, "--retention-tasks"), "--tasks"), "--tasks", args.tasks,
                        "--include-path", str(args.include_path[-1])]
            result = run_in_processes(argv, opts, args.processes, streaming=streaming,
                                      others=any(t.kind != "stream" for t in plan.tasks),
                                      lm_eval=[t.name for t in plan.tasks if t.kind == "lm_eval"])
        else:
            result = run(plan)
    from deeptalk_eval.run_report import after_run  # pandas: only once there is something to report

    print(summary_table(result.results))
    print(f"\nresults: {result.path}")
    print(after_run(result.results, result.path, args.output_dir))
    return result.exit_code


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from deeptalk_eval.registry import TaskIndex, model_specs

    if args.what == "models":
        print(tabulate(sorted(model_specs().items()), headers=["model", "adapter"]))
    elif args.what == "scorers":
        from deeptalk_eval.scoring.base import scorer_names

        print("\n".join(scorer_names()))
    else:
        index = TaskIndex.scan(args.include_path)
        if args.what == "groups":
            print(tabulate([(g, len(m), ", ".join(m)) for g, m in index.all_groups().items()],
                           headers=["group", "tasks", "members"]))
        else:
            rows = [(name, str(path)) for name, path in sorted(index.files.items())]
            print(tabulate(rows, headers=["task", "file"]))
        for err in index.broken.values():
            print(f"unreadable task file: {err}", file=sys.stderr)
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Schema, data file, scorer names, the first request's prompt. Exit 2 on the first problem."""
    from deeptalk_eval.scoring.base import get_scorer
    from deeptalk_eval.task_config import load_task
    from deeptalk_eval.task_docs import load_docs
    from deeptalk_eval.task_requests import build_request, render_prompt
    from deeptalk_eval.task_yaml import is_template, read_task_file

    offline_by_default(args.online)

    for path in args.paths:
        if is_template(path):  # `validate tasks/voicebench/*.yaml` names the family's templates too
            read_task_file(path)  # its YAML and its own includes; its fields are checked in the tasks
            print(f"{path}: a template, included by tasks")
            continue
        task = load_task(path)
        for i, spec in enumerate(task.scorers):
            try:
                get_scorer(spec.name)
            except KeyError as e:
                raise TaskConfigError(f"{task.path}: field 'scorers[{i}].name': {e.args[0]}") from None
        print(f"{task.path}: task {task.name!r} version {task.version} ({task.kind})")
        if task.kind == "lm_eval":
            print(f"  lm-eval tasks: {task.lm_eval['tasks']}")
            continue
        if task.data_path is None and not args.online:
            if task.example is None:
                print(f"  online-only dataset {task.hub['path']!r}: data not checked (use --online)")
                continue
            validate_example(task)
            continue
        docs = load_docs(task, online=args.online)
        if not docs:
            raise TaskConfigError(f"{task.data_path}: no samples")
        print(f"  {len(docs)} samples; scorers: {[s.name for s in task.scorers]}; "
              f"metrics: {[m.name for m in task.metrics]}")
        print(f"  first prompt: {render_prompt(task, docs[0])!r}")
        if task.input_modality == "speech" and task.audio_field:
            req = build_request(task, docs[0])
            print(f"  first audio: {req.audio.duration:.2f} s at {req.audio.sample_rate} Hz")
    return EXIT_OK


def validate_example(task) -> None:
    """An online-only task checked offline against its `dataset.example` (one doc as the hub
    serves it): process_docs, the input fields, the prompt, and every scorer on an empty
    reply (which reads the gold fields without asking a model, an ASR or a judge)."""
    from deeptalk_eval.scoring.base import SampleView, ScoringContext, get_scorer
    from deeptalk_eval.task_docs import example_docs
    from deeptalk_eval.task_requests import SampleInputError, render_prompt

    hub = task.hub
    where = f"{hub['path']}" + (f" ({hub['name']})" if hub.get("name") else "")
    doc = example_docs(task)[0]
    for kind, name in (("text_field", task.text_field), ("audio_field", task.audio_field)):
        if name and name not in doc:
            raise TaskConfigError(f"{task.path}: dataset.example (after process_docs) has no field {name!r} "
                                  f"named by input.{kind}; fields: {sorted(doc)}")
    try:
        prompt = render_prompt(task, doc)
    except SampleInputError as e:
        raise TaskConfigError(f"{task.path}: dataset.example: {e}") from None
    ctx = ScoringContext(task_config=task.raw)
    metrics: dict[str, float | None] = {}
    for i, spec in enumerate(task.scorers):
        view = SampleView(doc=doc, response=None, channel=spec.channel, channel_text="")
        try:
            values = get_scorer(spec.name)(view, ctx, **spec.args)
        except Exception as e:
            raise TaskConfigError(f"{task.path}: field 'scorers[{i}]' ({spec.name}) fails on dataset.example: "
                                  f"{type(e).__name__}: {e}") from None
        metrics.update({spec.prefix + k: v for k, v in (values or {}).items()})
    undeclared = [m.name for m in task.metrics if m.name not in metrics
                  and not (m.aggregation == "ratio" and {m.numerator, m.denominator} <= set(metrics))]
    if undeclared:
        raise TaskConfigError(f"{task.path}: metric(s) {undeclared} are produced by no scorer "
                              f"(the scorers give {sorted(metrics)})")
    print(f"  online-only dataset {where!r}: not loaded offline (use --online); checked against "
          f"dataset.example: fields {sorted(doc)}")
    print(f"  scorers: {[s.name for s in task.scorers]} (each ran on an empty reply); "
          f"metrics: {[m.name for m in task.metrics]}")
    print(f"  first prompt: {prompt!r}" + (" (speech input: the audio is the request)"
                                          if prompt is None and task.input_modality == "speech" else ""))


def cmd_merge(args: argparse.Namespace) -> int:
    from deeptalk_eval.run.merge import merge
    from deeptalk_eval.run.summary_table import summary_table

    result = merge(args.out, args.inputs)
    print(summary_table(result.results))
    print(f"\nmerged results: {result.path}")
    return result.exit_code


def cmd_delegate(name: str, argv: list[str]) -> int:
    """`leaderboard` and `regress` live in their own modules with their own arguments."""
    import importlib

    module = importlib.import_module(f"deeptalk_eval.{name}")
    p = Parser(prog=f"deeptalk-eval {name}", description=module.__doc__.split("\n\n")[0])
    module.add_arguments(p)
    return int(module.run(p.parse_args(argv)) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in TOP_LEVEL_FLAGS):
        argv = ["run"] + argv  # `deeptalk-eval --model X --tasks Y` is `run`
    try:
        if argv[0] in ("leaderboard", "regress"):
            return cmd_delegate(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        args.argv = argv
        handler = {"run": cmd_run, "list": cmd_list, "validate": cmd_validate, "merge": cmd_merge}
        return handler[args.command](args)
    except UsageError as e:  # every user mistake, and only those (see deeptalk_eval.errors)
        print(f"deeptalk-eval: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
