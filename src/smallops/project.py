"""A smallops project on disk: smallops.toml, workflows/*.py, evals/, and its log database."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
import traceback
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smallops.config import CONFIG_FILE, Settings, find_project_root
from smallops.errors import ConfigError, SmallopsError, StorageError, UnknownWorkflowError

if TYPE_CHECKING:
    from smallops.storage.db import Engine
    from smallops.workflow import Workflow

log = logging.getLogger("smallops")


class Project:
    """The project folder and what it defines."""

    def __init__(self, root: Path, settings: Settings | None = None) -> None:
        self.root = root.resolve()
        self.settings = settings or Settings.load(self.root)

    @classmethod
    def find(cls, start: Path | None = None) -> Project:
        """The project at `start` (a folder holding smallops.toml) or above the current folder."""
        if start is not None:
            if not (start / CONFIG_FILE).is_file():
                raise ConfigError(
                    f"{start} is not a smallops project (no {CONFIG_FILE})",
                    hint="run `smallops init` there, or pass --project DIR",
                )
            return cls(start)
        root = find_project_root()
        if root is None:
            raise ConfigError(
                f"no {CONFIG_FILE} in this folder or above it",
                hint="run `smallops init` to create a project, or pass --project DIR",
            )
        return cls(root)

    @cached_property
    def workflows(self) -> dict[str, Workflow[Any]]:
        """Every Workflow defined in workflows/*.py, by name; the first broken module raises."""
        found, problems = self.load_workflows()
        if problems:
            raise problems[0]
        return found

    def load_workflows(self) -> tuple[dict[str, Workflow[Any]], list[SmallopsError]]:
        """Every Workflow that loads, and the errors of the modules that do not."""
        from smallops.workflow import Workflow  # (commands that only read the log skip it)

        folder = self.root / "workflows"
        found: dict[str, Workflow[Any]] = {}
        problems: list[SmallopsError] = []
        if str(self.root) not in sys.path:
            sys.path.insert(0, str(self.root))
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            try:
                module = _import(path)
            except SmallopsError as exc:
                problems.append(exc)
                continue
            for value in vars(module).values():
                if isinstance(value, Workflow) and found.setdefault(value.name, value) is not value:
                    problems.append(
                        ConfigError(f"two workflows are named {value.name!r} ({path.name})")
                    )
        return found, problems

    def workflow(self, name: str) -> Workflow[Any]:
        """The workflow called `name` (`email-triage` and `email_triage` both match)."""
        wanted = name.replace("_", "-")
        for key, workflow in self.workflows.items():
            if key.replace("_", "-") == wanted:
                return workflow
        known = ", ".join(sorted(self.workflows)) or "none defined yet"
        raise UnknownWorkflowError(
            f"no workflow named {name!r} in {self.root / 'workflows'}",
            hint=f"known workflows: {known}",
        )

    def engine(self) -> Engine:
        """The log database, with its schema up to date and any spooled runs written."""
        from smallops.storage.db import ensure_schema, log_database, safe_url
        from smallops.storage.health import DatabaseError
        from smallops.storage.store import Unreachable
        from smallops.storage.writer import replay_spool

        url, engine = log_database(self.settings.log)
        try:
            ensure_schema(engine)
        except DatabaseError as exc:
            raise StorageError(
                f"cannot open the log database {safe_url(url)}: {_first_line(exc)}",
                hint=f"check that it is running and that {self.settings.source('database_url')} "
                "is right",
            ) from None
        try:
            replay_spool(self.settings.log)
        except Unreachable as exc:  # it answered a moment ago: read what is there, replay later
            log.warning("smallops: the spool could not be replayed now: %s", exc)
        return engine


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import(path: Path) -> Any:
    """Load a workflow module afresh, under a name unique to its project (several may load)."""
    name = (
        f"_smallops_workflows_{hashlib.sha1(str(path.parent).encode()).hexdigest()[:8]}_{path.stem}"
    )
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SmallopsError as exc:
        del sys.modules[name]
        exc.message = f"workflows/{path.name}: {exc.message}"
        raise
    except Exception as exc:
        del sys.modules[name]
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        line = (
            exc.lineno if isinstance(exc, SyntaxError) else (frames[-1].lineno if frames else None)
        )
        where = f"workflows/{path.name}" + (f", line {line}" if line else "")
        raise ConfigError(
            f"{where}: {type(exc).__name__}: {exc}",
            hint=f"fix the module; `python workflows/{path.name}` shows the full traceback",
        ) from None
    return module
