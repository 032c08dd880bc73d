"""Power: how many training seeds and evaluation sessions detect a difference of the paper's size.

Reads the paired differences of a run (``reproduce.json`` of ``rgalign reproduce``, or ``fusion.json`` of
``bench/fusion.py``): per seed a paired bootstrap interval over the evaluation sessions, from which it takes
sigma_sess (the per-session spread: half-width x sqrt(N) / 1.96) and sigma_train (the spread of the per-seed
differences: training randomness on fixed sessions). The mean difference over n seeds on N sessions has
variance sigma_train^2 / n + sigma_sess^2 / N; a two-sided level-alpha test detects delta with power
1 - beta when delta >= (t_{1-alpha/2, n-1} + t_{1-beta, n-1}) * sqrt(that variance).

delta is the paper's relative gain (R@3 +0.56%, MRR +0.50% for RGAlign-Rec over the base model, Table 2) times
the reference model's level, or ``--delta`` in points.

    python bench/power.py --from docs/results/reproduce.json --pair "QE-Rec (LTP) - Baseline" --sessions 5000
"""
from __future__ import annotations

import argparse
import json
import math

from scipy import stats

PAPER_RELATIVE = {"R@3": 0.0056, "MRR": 0.0050}   # Table 2 "Rel. Improv.": RGAlign-Rec (Full) over the base


def detectable(n_seeds: int, n_sessions: int, sd_train: float, sd_sess: float, power: float = 0.8,
               alpha: float = 0.05) -> float:
    """The smallest difference a two-sided t-test over ``n_seeds`` seeds detects with ``power``."""
    if n_seeds < 2:
        return math.inf
    df = n_seeds - 1
    se = math.sqrt(sd_train ** 2 / n_seeds + sd_sess ** 2 / n_sessions)
    return (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se


def seeds_needed(delta: float, n_sessions: int, sd_train: float, sd_sess: float, power: float = 0.8,
                 alpha: float = 0.05, max_seeds: int = 10_000) -> int | None:
    """Fewest seeds (>= 2) that detect ``delta``; None when even ``max_seeds`` do not (the session noise
    alone is too large: more evaluation sessions are needed)."""
    for n in range(2, max_seeds + 1):
        if detectable(n, n_sessions, sd_train, sd_sess, power, alpha) <= delta:
            return n
    return None


def spreads(per_seed: list[dict], metric: str, n_sessions: int) -> tuple[float, float]:
    """(sigma_train, sigma_sess) of a pair's per-seed paired differences ``[{metric: {value, lo, hi}}]``."""
    vals = [p[metric]["value"] for p in per_seed]
    hw = sum((p[metric]["hi"] - p[metric]["lo"]) / 2 for p in per_seed) / len(per_seed)
    sd_train = float(stats.tstd(vals)) if len(vals) > 1 else 0.0
    return sd_train, hw * math.sqrt(n_sessions) / 1.96


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="src", required=True, help="reproduce.json (its 'paired') or a JSON of pairs")
    ap.add_argument("--pair", required=True, help="the paired difference to read, e.g. 'QE-Rec (LTP) - Baseline'")
    ap.add_argument("--sessions", type=int, required=True, help="evaluation sessions the run scored")
    ap.add_argument("--level", type=float, default=None, help="the reference model's value of the metric (for "
                                                              "the paper's relative delta), e.g. 0.2478")
    ap.add_argument("--delta", type=float, default=None, help="the difference to detect (absolute, e.g. 0.0015)")
    ap.add_argument("--metric", default="R@3", choices=sorted(PAPER_RELATIVE))
    ap.add_argument("--power", type=float, default=0.8)
    args = ap.parse_args()
    pairs = json.loads(open(args.src).read())
    pairs = pairs.get("paired", pairs)
    if args.pair not in pairs:
        raise SystemExit(f"--pair {args.pair!r} is not in {args.src}; choose one of {sorted(pairs)}")
    if args.delta is None and args.level is None:
        raise SystemExit("give --delta (absolute) or --level (the reference model's value, for the paper's delta)")
    delta = args.delta if args.delta is not None else PAPER_RELATIVE[args.metric] * args.level
    sd_train, sd_sess = spreads(pairs[args.pair]["per_seed"], args.metric, args.sessions)
    print(f"{args.pair}, {args.metric}: sigma_train {100 * sd_train:.3f} points, sigma_sess {100 * sd_sess:.2f} "
          f"points per session; delta {100 * delta:.3f} points, power {args.power:.0%}, alpha 5%\n")
    print("| evaluation sessions | seeds needed | detectable at 3 seeds (points) |\n|---:|---:|---:|")
    for n in sorted({args.sessions, 5_000, 20_000, 50_000, 100_000, 500_000}):
        k = seeds_needed(delta, n, sd_train, sd_sess, args.power)
        print(f"| {n:,} | {k if k else '> 10,000'} | {100 * detectable(3, n, sd_train, sd_sess, args.power):.3f} |")


if __name__ == "__main__":
    main()
