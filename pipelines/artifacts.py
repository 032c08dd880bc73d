"""What KFP component bodies share (imported inside them: the body is all a component ships, and importing
``components`` there would re-run its decorators)."""


def report(metrics, values: dict) -> None:
    """Log ``values`` on a KFP ``Metrics`` artifact and also write them to its path: kfp.local's cache treats
    an output whose file is missing as stale, and lightweight Metrics write no file of their own. A value that is
    not finite (a teacher without one valid query has no mean NDCG) is left out: KFP metadata cannot hold NaN,
    and the step's MLflow run keeps every value."""
    import json
    import math
    from pathlib import Path
    values = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    for k, v in values.items():
        metrics.log_metric(k, v)
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(values, indent=1))
