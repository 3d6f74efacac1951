"""`smallops init`: a new project laid out as every smallops project is.

smallops.toml                     database URL, providers, prices, alerts
workflows/<name>.py, .prompt      the workflow and its prompt
evals/<name>.jsonl                real examples to test it on
.github/workflows/smallops.yml    the checks CI runs on pull requests
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from smallops.errors import ConfigError

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE_NAMES = tuple(sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir()))

SMALLOPS_TOML = """\
# smallops project settings. Secrets never go here: providers name where a key lives.

[smallops]
# The log of every call. SQLite by default; a team shares Postgres:
#   export SMALLOPS_DATABASE_URL=postgresql://user@host/dbname   (the variable wins over this)
database_url = "sqlite:///.smallops/smallops.db"

# An OpenAI-compatible server under its own name, used as model = "ollama:llama3.1:8b":
# [providers.ollama]
# kind = "openai"
# base_url = "http://localhost:11434/v1"

# Keys come from $OPENAI_API_KEY and $ANTHROPIC_API_KEY unless a provider names a secret store
# (aws-sm:, vault:, gcp-sm:, op://, doppler:, command:); `smallops secrets check` tries them.
# [providers.openai]
# api_key = "aws-sm:prod/openai#api_key"        # pip install 'smallops[aws]'
# [secrets]                                      # keys from a store: fetched, then cached
# cache_ttl = 300                                # seconds a fetched key is used as it is
# max_stale = 3600                               # seconds more it serves, the store down

# Your own price for a model, USD per million tokens (otherwise genai-prices is used):
# [prices."ollama:llama3.1:8b"]
# input = 0.0
# output = 0.0

# Alerts: a workflow's owner= hears about cost surprises, budgets, an open breaker, error
# spikes, a review backlog past its service level, a silent model upgrade and eval
# regressions. `smallops alerts check` from cron (or `smallops serve`) checks the rules;
# `smallops alerts test ops-slack` sends a test message. Secrets stay in the environment.
# [alerts]
# dashboard_url = "https://smallops.acme.example"   # links in the alerts
# escalate_after = "15m"                              # unacknowledged this long: escalate_to
#
# [alerts.channels.ops-slack]
# kind = "slack"                                      # the URL in $SLACK_WEBHOOK_URL
# [alerts.channels.pager]
# kind = "pagerduty"                                  # the key in $PAGERDUTY_ROUTING_KEY
# [alerts.channels.mail]
# kind = "email"                                      # to the owner, when it is an address
# host = "smtp.acme.example"
# from = "smallops <alerts@acme.example>"
# username_env = "SMTP_USERNAME"
# password_env = "SMTP_PASSWORD"
#
# [alerts.owners]                                     # owner -> the channels that reach them
# "ops@acme.example" = ["ops-slack"]
#
# [alerts.workflows.email-triage]
# escalate_to = ["pager"]
# [alerts.workflows.email-triage.rules.review_backlog]
# sla = "4h"
# [alerts.rules.cost_surprise]                        # project-wide thresholds
# increase = 0.5                                      # +50% on the 4 weeks before ...
# floor_usd = 5                                       # ... and at least $5 more
"""

GITIGNORE = """\
# smallops: the local log database and spool
.smallops/
"""

GITHUB_WORKFLOW = """\
# Pull requests that touch workflows or evals: check them, then gate on the eval sets.
name: smallops
on:
  pull_request:
    paths: ["workflows/**", "evals/**", "smallops.toml"]
jobs:
  evals:
    runs-on: ubuntu-latest
    env:
      OPENAI_API_KEY: ${{ secrets.OPENAI_API_KEY }}
      ANTHROPIC_API_KEY: ${{ secrets.ANTHROPIC_API_KEY }}
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.12"
      - run: pip install 'smallops[all]'
      # Pinned models, declared fallbacks, 20+ cases, and evals run on the current prompts.
      - run: smallops check
      # Case by case against the committed baselines: exit 1 on a regression, 2 if the
      # provider cannot be reached. The summary lands in the job's step summary.
      - run: smallops eval --ci --junit eval-results.xml
      - uses: actions/upload-artifact@v4
        if: always()
        with:
          name: eval-results
          path: eval-results.xml
"""


def template_provider(template: str) -> str:
    """The provider a template's workflow calls: its model pin up to the colon."""
    module = template.replace("-", "_")
    text = (TEMPLATES / template / "workflows" / f"{module}.py").read_text(encoding="utf-8")
    match = re.search(r'model="(\w+):', text)
    return match.group(1) if match else "openai"


def create_project(folder: Path, template: str) -> tuple[list[Path], list[Path]]:
    """Write the project files that are missing; returns (written, kept as they were)."""
    source = TEMPLATES / template
    if template not in TEMPLATE_NAMES:
        raise ConfigError(
            f"unknown template {template!r}", hint=f"use one of: {', '.join(TEMPLATE_NAMES)}"
        )
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder")
    files: dict[Path, str | Path] = {
        Path("smallops.toml"): SMALLOPS_TOML,
        Path(".gitignore"): GITIGNORE,
        Path(".github/workflows/smallops.yml"): GITHUB_WORKFLOW,
    }
    for path in sorted(source.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files[path.relative_to(source)] = path
    written, kept = [], []
    for relative, content in files.items():
        target = folder / relative
        if target.exists():
            kept.append(relative)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_text(content, encoding="utf-8")
        written.append(relative)
    return written, kept
