"""Where tasks and models come from: built-ins, --include-path, entry points, --model-path.

Tasks are YAML files found under the built-in `tasks/` folder, under every
`--include-path`, and under folders announced by the `deeptalk_eval.tasks` entry-point
group; files whose name starts with "_" are templates that tasks include, never tasks.
Models are "module:Class" strings: the built-ins below, the `deeptalk_eval.models`
entry-point group, or a user's own `--model-path`.
Nothing is imported until it is used.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deeptalk_eval.errors import UsageError
from deeptalk_eval.task_config import TaskConfig, load_task
from deeptalk_eval.task_yaml import TaskConfigError, is_template, read_task_file

BUILTIN_MODELS: dict[str, str] = {
    "deeptalk": "deeptalk_eval.models.deeptalk:DeepTalkAdapter",
    "base_llm": "deeptalk_eval.models.text_llm:BaseLLM",
    "cascade": "deeptalk_eval.models.cascade:Cascade",
    "glm4voice": "deeptalk_eval.models.glm4voice:GLM4Voice",
    "qwen2_5_omni": "deeptalk_eval.models.qwen_omni:Qwen25Omni",
    "qwen3_omni": "deeptalk_eval.models.qwen_omni:Qwen3Omni",
    "moshi": "deeptalk_eval.models.moshi:Moshi",
}
ALL = "all"


def nearest(name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(near)}?)" if near else ""


# -- tasks ----------------------------------------------------------------------------


def builtin_tasks_dir() -> Path:
    """The `tasks/` folder shipped beside the package (repository checkout or editable install)."""
    return Path(__file__).resolve().parent.parent / "tasks"


def entry_point_task_dirs() -> list[Path]:
    dirs = []
    for ep in importlib.metadata.entry_points(group="deeptalk_eval.tasks"):
        value = ep.load()
        value = value() if callable(value) else value
        dirs.append(Path(value))
    return dirs


@dataclass
class TaskIndex:
    """Task name -> file, group name -> task names, and files that could not be read."""

    files: dict[str, Path] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    broken: dict[Path, str] = field(default_factory=dict)
    user_dirs: list[Path] = field(default_factory=list)
    online_only: set[str] = field(default_factory=set)  # data only on a hub: named explicitly, not in `all`

    @classmethod
    def scan(cls, include_paths: list[str | Path] = (), entry_points: bool = True) -> TaskIndex:
        index = cls()
        user_dirs = [Path(p).resolve() for p in include_paths]
        for d in user_dirs:
            if not d.is_dir():
                raise UsageError(f"--include-path {d}: not a folder")
        dirs = [builtin_tasks_dir()] + (entry_point_task_dirs() if entry_points else []) + user_dirs
        index.user_dirs = user_dirs
        parsed: list[tuple[Path, Any]] = []
        for d in dirs:
            if not d.is_dir():
                continue
            for f in sorted(list(d.rglob("*.yaml")) + list(d.rglob("*.yml"))):
                f = f.resolve()
                if is_template(f):
                    continue
                try:
                    parsed.append((f, read_task_file(f).data))
                except TaskConfigError as e:  # unreadable, not UTF-8, malformed, a bad include
                    index.broken[f] = str(e)
        # The folders that `kind: lm_eval` tasks hand to lm-eval hold lm-eval's own task
        # YAMLs (which also have a `task:` key): they are not ours.
        lm_eval_dirs = [(f.parent / data["lm_eval"]["include_path"]).resolve() for f, data in parsed
                        if isinstance(data, dict) and isinstance(data.get("lm_eval"), dict)
                        and isinstance(data["lm_eval"].get("include_path"), str)]
        for f, data in parsed:
            if not any(f.is_relative_to(d) for d in lm_eval_dirs):
                index._add(f, data)
        index.broken = {f: e for f, e in index.broken.items()
                        if not any(f.is_relative_to(d) for d in lm_eval_dirs)}
        return index

    def _add(self, path: Path, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("task"), str):
            return  # not a task file (e.g. a gates.yaml)
        name = data["task"]
        if name in self.files and self.files[name] != path:
            # A later folder (user include path) overrides an earlier one (built-ins).
            print(f"note: task {name!r} in {path} overrides {self.files[name]}", file=sys.stderr)
            for members in self.groups.values():
                if name in members:
                    members.remove(name)
        self.files[name] = path
        dataset = data.get("dataset")
        if isinstance(dataset, dict) and not dataset.get("path") and dataset.get("hub"):
            self.online_only.add(name)
        else:
            self.online_only.discard(name)
        groups = data.get("group") or []
        for g in [groups] if isinstance(groups, str) else groups:
            if isinstance(g, str):
                self.groups.setdefault(g, []).append(name)

    def all_groups(self) -> dict[str, list[str]]:
        # `all` is every task that runs offline; hub-only tasks run when named or by their group.
        return {ALL: sorted(set(self.files) - self.online_only),
                **{g: sorted(v) for g, v in sorted(self.groups.items())}}

    def _raise_broken(self, only_user: bool) -> None:
        bad = {p: e for p, e in self.broken.items()
               if not only_user or any(p.is_relative_to(d) for d in self.user_dirs)}
        if bad:
            raise TaskConfigError("; ".join(bad.values()))

    def resolve(self, spec: str) -> list[str]:
        """'all' | comma-separated task names, group names or YAML paths -> task names (ordered)."""
        self._raise_broken(only_user=True)  # a broken file the user pointed us at is always an error
        names: list[str] = []
        groups = self.all_groups()
        for item in [s.strip() for s in spec.split(",") if s.strip()]:
            if item.endswith((".yaml", ".yml")) and Path(item).is_file():
                cfg = load_task(item)
                self.files.setdefault(cfg.name, cfg.path)
                found = [cfg.name]
            elif item in groups:
                if item == ALL:
                    self._raise_broken(only_user=False)
                found = groups[item]
            elif item in self.files:
                found = [item]
            else:
                self._raise_broken(only_user=False)  # perhaps the wanted task is the broken file
                known = sorted(set(self.files) | set(groups))
                raise UsageError(f"unknown task or group {item!r}{nearest(item, known)}; "
                                 f"see `deeptalk-eval list tasks`")
            names += [n for n in found if n not in names]
        if not names:
            raise UsageError(f"--tasks {spec!r} selects no task")
        return names

    def load(self, name: str) -> TaskConfig:
        return load_task(self.files[name])


# -- models ---------------------------------------------------------------------------


def model_specs() -> dict[str, str]:
    """Model name -> "module:Class": built-ins, then the `deeptalk_eval.models` entry points."""
    specs = dict(BUILTIN_MODELS)
    for ep in importlib.metadata.entry_points(group="deeptalk_eval.models"):
        specs[ep.name] = ep.value
    return specs


def import_object(spec: str, what: str = "model") -> Any:
    """'package.module:Attr' or 'path/to/file.py:Attr' -> the object."""
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise UsageError(f"{what} {spec!r}: expected 'module:Class' or 'path/file.py:Class'")
    if module_part.endswith(".py"):
        path = Path(module_part).resolve()
        if not path.is_file():
            raise UsageError(f"{what} {spec!r}: file {path} not found")
        mod_name = f"deeptalk_eval_user_{path.stem}"
        module = sys.modules.get(mod_name)
        if module is None or getattr(module, "__file__", None) != str(path):
            s = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(s)
            sys.modules[mod_name] = module
            s.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as e:
            if e.name and module_part.startswith(e.name):
                raise UsageError(f"{what} {spec!r}: module {e.name!r} not found") from None
            raise
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UsageError(f"{what} {spec!r}: {module_part} has no attribute {attr!r}"
                         f"{nearest(attr, [a for a in dir(module) if not a.startswith('_')])}") from None


def model_class(name: str | None, model_path: str | None = None) -> type:
    """The adapter class for --model NAME (or --model-path module:Class)."""
    from deeptalk_eval.api import SpokenModel

    if model_path:
        cls = import_object(model_path)
    else:
        specs = model_specs()
        if name not in specs:
            raise UsageError(f"unknown model {name!r}{nearest(str(name), sorted(specs))}; "
                             f"known: {', '.join(sorted(specs))} (or use --model-path module:Class)")
        cls = import_object(specs[name])
    if not (isinstance(cls, type) and issubclass(cls, SpokenModel)):
        raise UsageError(f"{model_path or name}: {cls!r} is not a deeptalk_eval.api.SpokenModel subclass")
    return cls
