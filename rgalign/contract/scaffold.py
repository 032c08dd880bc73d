"""``rgalign data init``: scaffold a new project's data contract and Feast repo.

Writes ``<dir>/contract.yaml`` (a commented starting point: one profile view, one context view, the behaviour
sequence, one request feature, the prompt layout), ``<dir>/feature_repo/`` (the embedded-default and the
production ``feature_store`` configs and the contract-driven ``definitions.py``) and ``<dir>/README.md`` with
what each table needs. Refuses to overwrite an existing contract.
"""
from __future__ import annotations

import shutil
from pathlib import Path

TEMPLATE = """\
# Data contract of {name} (rgalign-rec data contract, version 1).
# Check the dataset against it with `rgalign data validate {folder}`; every table is <table>.parquet in this
# folder. Categorical features are integer ids 1..len(vocab) (0 / null = unknown); vocab[id - 1] is the
# string the reasoner reads.
version: 1
name: {name}
description: Customers of {name} opening the support chatbot.
entity: {{name: user, description: A customer who opens the chatbot}}

# intent_id (1..N), title, description; optional family (groups intents) and launch_day (0 = before training)
kb: {{table: kb}}
# session_id, user_id, event_timestamp (UTC), split (train | eval), shown_intents (list), clicked_intent
# (-1 = no click), and each request feature below
sessions: {{table: sessions}}
# the refined labels of evaluation sessions: session_id, true_intent (optional table)
eval_labels: {{table: eval_labels, optional: true}}

# the behaviour sequence: recent intent clicks and their times (epoch s), cut to a window before each request
sequence: {{view: recent_activity, intents: recent_topics, times: recent_topic_ts, window_hours: 24, max_len: 10}}

# Feast feature views keyed by user_id with an event_timestamp. kind: categorical | numerical | timestamp
# (epoch s) | sequence (int list); dtype int64 | float64 for numbers; scale: log1p for heavy tails.
views:
  - name: customer_profile
    table: customer_profile
    ttl_days: 30
    features:
      - {{name: plan, kind: categorical, label: Plan, vocab: [Basic, Standard, Premium]}}
      - {{name: tenure_days, kind: numerical, dtype: int64, label: Customer For, unit: days, scale: log1p}}
  - name: account_state
    table: account_state
    ttl_days: 7
    features:
      - {{name: account_status, kind: categorical, label: Account Status, vocab: [Active, Overdue, Suspended]}}
      - {{name: status_changed_at, kind: timestamp, label: Status Changed At}}
  - name: recent_activity
    table: recent_activity
    ttl_days: 1
    features:
      - {{name: recent_topics, kind: sequence, label: Recent Help Topics}}
      - {{name: recent_topic_ts, kind: sequence, label: Click Times}}

# sent with each recommend call (and stored in the session log)
request:
  - {{name: channel, kind: categorical, label: Opened From, vocab: [App, Website, Email Link]}}

# computed at request time, the same way for training and serving
derived:
  - {{name: days_since_change, kind: numerical, label: Days In Current Status, unit: days, op: days_since,
     from: status_changed_at}}

# the user context of the reasoner prompt: groups in order, each a title and its features
prompt:
  - title: Customer Profile
    features: [plan, tenure_days]
  - title: Account and Interaction Context
    features: [channel, account_status, days_since_change]
  - title: Recent Activity
    features: [recent_topics]

monitoring:
  critical: [account_status, channel]
"""

README = """\
# {name}: dataset for rgalign-rec

Tables (parquet, one file each, next to `contract.yaml`):

| table | columns |
|---|---|
| `kb` | `intent_id` (1..N), `title`, `description`, optional `family`, `launch_day` |
| `sessions` | `session_id`, `user_id`, `event_timestamp` (UTC), `split` (train / eval), `shown_intents` (list of intent ids), `clicked_intent` (-1 = none), the request features |
| `eval_labels` | `session_id`, `true_intent` (optional: refined labels of evaluation sessions) |
| one per view | `user_id`, `event_timestamp`, the view's features |

Check it: `rgalign data validate {folder}`. The Feast repo in `feature_repo/` reads `contract.yaml`
(`RGALIGN_CONTRACT`); `feature_store.production.yaml` is the cluster configuration (Redis online store).
"""


def init_project(folder: str | Path, name: str | None = None) -> list[Path]:
    """Write the scaffold into ``folder`` (created); returns the written paths."""
    root = Path(folder)
    name = name or root.resolve().name
    if (root / "contract.yaml").exists():
        raise FileExistsError(f"{root / 'contract.yaml'} exists; `rgalign data init` never overwrites a contract: "
                              "edit it, or choose another folder")
    from rgalign.features.feast_io import feature_repo_path
    repo = feature_repo_path()
    root.mkdir(parents=True, exist_ok=True)
    (root / "feature_repo").mkdir(exist_ok=True)
    written = []
    for text, target in ((TEMPLATE, "contract.yaml"), (README, "README.md")):
        p = root / target
        p.write_text(text.format(name=name, folder=root))
        written.append(p)
    for f in ("feature_store.yaml", "feature_store.production.yaml", "definitions.py"):
        if (repo / f).is_file():
            written.append(Path(shutil.copyfile(repo / f, root / "feature_repo" / f)))
    return written
