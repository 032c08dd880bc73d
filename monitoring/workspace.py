"""The Evidently workspace on disk: one project per environment, its dashboard, and the snapshots a
monitoring run publishes (A/B per arm and day, A/B statistics, feature / score / embedding drift).

    rgalign monitor publish --log ab.parquet --workspace monitoring/workspace
    rgalign ui --workspace monitoring/workspace          # Evidently UI on http://127.0.0.1:8000

Per-arm rates are Evidently ``MeanValue`` metrics of 0/1 columns (CTR@3 = click3_<arm>, intent hit rate =
hit3_<arm>, CSAT = csat_good_<arm> over rated sessions): single values the dashboard can plot per arm,
unlike the recsys presets, which drop sessions without a click and cannot pick k. The A/B tests are computed
by ``rgalign.abtest`` and published as a one-row dataset of p-values (tag ``ab-stats``).
Publishing only appends snapshots: a failed run leaves every earlier snapshot as it was.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_WORKSPACE = Path("artifacts") / "evidently"
AB_COLUMNS = {"click3": "CTR@3", "hit3": "intent hit rate", "csat_good": "CSAT"}
STAT_COLUMNS = {"p_ctr3": "CTR@3 p (fixed)", "p_seq_ctr3": "CTR@3 p (sequential)", "p_csat": "CSAT p (fixed)",
                "p_seq_csat": "CSAT p (sequential: the guardrail's)", "p_hit3": "hit rate p (fixed)",
                "guardrail": "CSAT guardrail breached (1 = yes)"}
from rgalign.abtest import AB_SEGMENTS as SEGMENTS   # log columns: sessions where the query path should pay

SCENARIOS = ("none", "logistics")   # drift runs are tagged scenario:<name>; the dashboard plots each apart


def _ws(path: str | Path):
    from evidently.ui.workspace import Workspace
    return Workspace.create(str(path))


def project(path: str | Path, name: str = "rgalign-rec dev"):
    """The project called ``name`` (created with its dashboard on first use)."""
    ws = _ws(path)
    found = ws.search_project(name)
    if found:
        return ws, found[0]
    p = ws.create_project(name, description="Proactive intent recommendation: A/B arms, drift, guardrails")
    _dashboard(p)
    return ws, p


def _dashboard(p) -> None:
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel, text_panel
    arms = ("champion", "challenger")
    p.dashboard.add_panel(text_panel("rgalign-rec: champion vs challenger", "daily per-arm rates, tests and drift"),
                          tab="A/B")
    for col, title in AB_COLUMNS.items():  # one column per arm (the UI merges series that differ only by tags),
        p.dashboard.add_panel(line_plot_panel(f"{title} per arm", [   # both arms in one daily snapshot: lines
            PanelMetric(legend=a, tags=["ab-arms"], metric="MeanValue", metric_labels={"column": f"{col}_{a}"})
            for a in arms], size="half"), tab="A/B")
    for seg, title in SEGMENTS.items():    # where the query path should pay: the hit rate of each arm there
        p.dashboard.add_panel(line_plot_panel(f"intent hit rate per arm: {title}", [
            PanelMetric(legend=a, tags=["ab-arms"], metric="MeanValue", metric_labels={"column": f"hit3_{seg}_{a}"})
            for a in arms], size="half"), tab="A/B")
    p.dashboard.add_panel(line_plot_panel("A/B p-values (fixed horizon and sequential)", [
        PanelMetric(legend=t, tags=["ab-stats"], metric="MeanValue", metric_labels={"column": c})
        for c, t in STAT_COLUMNS.items() if c != "guardrail"], size="half"), tab="A/B")
    p.dashboard.add_panel(line_plot_panel("CSAT guardrail", [
        PanelMetric(legend="breached", tags=["ab-stats"], metric="MeanValue", metric_labels={"column": "guardrail"})],
        size="half"), tab="A/B")
    for sc in SCENARIOS:   # a panel per scenario: the UI merges series that differ only by tags, and a simulated
        where = "real data" if sc == "none" else f"{sc} scenario"      # run must never mix with real data
        for title, tag, metric, labels in (
                ("Share of drifted feature columns", "drift", "DriftedColumnsCount", {"value_type": "share"}),
                ("Ranker top-1 score drift (K-S p below 1,000 rows, else Wasserstein)", "score-drift", "ValueDrift",
                 {"column": "top_score"}),
                ("Query-embedding drift (domain classifier ROC AUC)", "embedding-drift", "MeanValue",
                 {"column": "embedding_auc"})):
            p.dashboard.add_panel(line_plot_panel(f"{title}: {where}", [
                PanelMetric(legend=where, tags=[tag, f"scenario:{sc}"], metric=metric, metric_labels=labels)],
                size="half"), tab="Drift")
    p.save()


def _mean_report(frame: pd.DataFrame, columns: list[str], ts: datetime, tags: list[str], name: str,
                 metadata: dict | None = None):
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue, RowCount
    dd = DataDefinition(numerical_columns=columns)
    rep = Report([RowCount()] + [MeanValue(column=c) for c in columns], tags=tags)
    return rep.run(Dataset.from_pandas(frame[columns].astype(float), data_definition=dd), None, timestamp=ts, name=name,
                   metadata=metadata)


def ab_snapshots(log: pd.DataFrame, summary_by_day: dict | None = None, metadata: dict | None = None) -> list:
    """Per day: each arm's rates (sessions without a click count as 0; CSAT over rated sessions), one snapshot
    with a column per arm (so the dashboard draws each arm as its own line). Each snapshot is named and carries
    ``metadata`` (the data source) plus each arm's target (``arm_target`` of the log: the endpoint URL or
    registry version it served)."""
    if log.empty:
        raise ValueError("the A/B log is empty: nothing to publish")
    log = log.assign(day=pd.to_datetime(log.event_timestamp, utc=True).dt.floor("D"),
                     csat_good=np.where(log.csat == "none", np.nan, (log.csat == "good").astype(float)))
    arms = sorted(log.arm.unique())
    targets = {str(a): str(g.arm_target.iloc[0]) for a, g in log.groupby("arm")} if "arm_target" in log else {}
    meta = {**(metadata or {}), **{f"target_{a}": t for a, t in targets.items()}}
    snaps = []
    for day, g in log.groupby("day"):   # one snapshot a day with a column per arm (NaN on the other arm's rows)
        frame = pd.DataFrame({f"{c}_{a}": np.where(g.arm == a, g[c].astype(float), np.nan)
                              for c in AB_COLUMNS for a in arms})
        for seg in (s for s in SEGMENTS if s in g):   # a log with segment columns: the hit rate in each, per arm
            for a in arms:
                col = np.where((g.arm == a) & g[seg].astype(bool), g.hit3.astype(float), np.nan)
                if not np.isnan(col).all():           # a segment without sessions that day has no value
                    frame[f"hit3_{seg}_{a}"] = col
        label = "; ".join(f"{a}: {targets.get(str(a), 'unrecorded')}" for a in arms)
        snaps.append(_mean_report(frame, list(frame.columns), day.to_pydatetime(), ["ab-arms"],
                                  f"A/B arms {day:%Y-%m-%d} ({label})", meta))
    for day, stats in (summary_by_day or {}).items():
        snaps.append(_mean_report(pd.DataFrame([stats]), list(STAT_COLUMNS), day, ["ab-stats"], f"A/B tests {day:%Y-%m-%d}",
                                  meta))
    return snaps


def stats_row(summary: dict) -> dict:
    """The p-values of one ``rgalign.abtest.ab_summary`` as the one-row frame the dashboard plots."""
    rows = {r.metric: r for r in summary["rows"]}
    nan = float("nan")
    return {"p_ctr3": rows["CTR@3"].p_value, "p_seq_ctr3": rows["CTR@3"].p_sequential,
            "p_hit3": rows["intent hit rate"].p_value, "p_csat": rows["CSAT"].p_value if "CSAT" in rows else nan,
            "p_seq_csat": rows["CSAT"].p_sequential if "CSAT" in rows else nan,
            "guardrail": float(summary["guardrail_breached"])}


def embedding_snapshot(result: dict, ts: datetime, tags: list[str], name: str, metadata: dict | None = None):
    return _mean_report(pd.DataFrame([{"embedding_auc": result["score"]}]), ["embedding_auc"], ts,
                        ["embedding-drift", *tags], name, metadata)


def publish(path: str | Path, snapshots: list, name: str = "rgalign-rec dev") -> int:
    """Append ``snapshots`` to the project; returns how many the project holds now."""
    if not snapshots:
        raise ValueError("no snapshots to publish")
    ws, p = project(path, name)
    for s in snapshots:
        ws.add_run(p.id, s)
    return len(ws.list_runs(p.id))
