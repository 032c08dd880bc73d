"""The ``rgalign`` command. Subcommands are thin: they build a typed config and call the core library.

    rgalign quickstart --scale ci          the main job on the embedded default (world -> Feast -> summary)
    rgalign world generate|show            the benchmark world
    rgalign features apply|materialize|training-set|prompt   Feast and verbalization
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path

from rgalign.config import SCALES, WorldConfig

DEFAULT_ROOT = Path("artifacts")


def add_config_args(p: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field, typed and documented from the field's metadata."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        typ = hints[f.name]
        base = next((t for t in typing.get_args(typ) if t is not type(None)), typ)
        kw = {"choices": sorted(SCALES)} if f.name == "scale" else {}
        p.add_argument("--" + f.name.replace("_", "-"), type=base, default=f.default,
                       help=f"{f.metadata.get('help', '')} (default: {f.default})", **kw)


def config_from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def _world_summary(world: Path) -> str:
    from rgalign.metrics import MetricValue, format_table
    from rgalign.world.generate import load_manifest
    m = load_manifest(world)
    rows = {name: {k: MetricValue(**v) for k, v in r.items()}
            for name, r in m["report"].items() if isinstance(r, dict)}
    r = m["rows"]
    return "\n".join([
        f"world {m['name']} at {world}",
        f"  {m['intents']} intents ({m['cold_start_intents']} cold-start), {r['sessions']:,} sessions "
        f"({m['eval_sessions']:,} in the evaluation week), {r['profiles']:,} profile snapshots, "
        f"{r['order_context']:,} order-context rows, {r['behaviour']:,} behaviour rows; generated in "
        f"{m['seconds']} s",
        "",
        format_table(rows, "Headroom on the evaluation week (95% bootstrap CI)")])


def cmd_world_generate(args) -> int:
    from rgalign.world.generate import generate_world
    cfg = config_from_args(WorldConfig, args)
    world = generate_world(cfg, Path(args.out), bitext=args.bitext, force=args.force)
    print(_world_summary(world))
    return 0


def cmd_world_show(args) -> int:
    print(_world_summary(Path(args.world)))
    return 0


def _session(args):
    from rgalign.features.feast_io import FeatureStoreSession
    return FeatureStoreSession(args.world, feast_dir=args.feast_dir)


def cmd_features_apply(args) -> int:
    print("applied:", ", ".join(_session(args).apply()))
    return 0


def cmd_features_materialize(args) -> int:
    fs = _session(args)
    fs.materialize()
    print(f"materialized into {fs.feast_dir / 'online_store.db'}")
    return 0


def cmd_features_training_set(args) -> int:
    df = _session(args).training_set(split=args.split)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, index=False)
    print(f"{len(df):,} rows x {df.shape[1]} columns -> {out}")
    return 0


def sample_prompt(world: Path, fs=None, session_id: int | None = None) -> str:
    """The reasoner prompt of one evaluation session, built from Feast features (for people to read)."""
    import pandas as pd

    from rgalign.features.prompt import ReasonerPrompt
    from rgalign.features.verbalize import Verbalizer
    fs = fs or _session(argparse.Namespace(world=world, feast_dir=None))
    s = fs.sessions("eval")
    if session_id is not None:
        s = s[s.session_id == session_id]
        if s.empty:
            raise KeyError(f"session_id {session_id} is not in the evaluation week of {world}")
    row = fs.training_set(sessions=s.head(1)).iloc[0].to_dict()
    kb = pd.read_parquet(Path(world) / "kb.parquet")
    v = Verbalizer(dict(zip(kb.intent_id, kb.title)))
    return ReasonerPrompt().plain(v.context(row))


def cmd_features_prompt(args) -> int:
    print(sample_prompt(Path(args.world), _session(args), args.session_id))
    return 0


def cmd_quickstart(args) -> int:
    from rgalign.features.feast_io import FeatureStoreSession
    from rgalign.world.generate import generate_world
    t0 = time.perf_counter()
    root = Path(args.out)
    cfg = WorldConfig(scale=args.scale, seed=args.seed)
    print(f"[1/4] world {cfg.name}: generating (or reusing) under {root / 'worlds'}", flush=True)
    world = generate_world(cfg, root / "worlds")
    fs = FeatureStoreSession(world)
    print(f"[2/4] feast apply -> registry {fs.feast_dir / 'registry.db'}", flush=True)
    fs.apply()
    print("[3/4] feast materialize -> SQLite online store", flush=True)
    fs.materialize()
    print("[4/4] point-in-time training set from the feature service", flush=True)
    train = fs.training_set(split="train")
    print()
    print(_world_summary(world))
    print()
    print(f"training set: {len(train):,} sessions x {train.shape[1]} columns "
          f"({(train.clicked_intent > 0).sum():,} with a click)")
    print(f"feast: repo {fs.repo}, registry + online store in {fs.feast_dir}")
    print("\nA reasoner prompt built from Feast features (paper section 3.2):\n")
    print(sample_prompt(world, fs))
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rgalign", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="generate the world, feast apply + materialize, print what was made")
    q.add_argument("--scale", choices=sorted(SCALES), default="ci")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default=str(DEFAULT_ROOT), help="artifacts root (default: ./artifacts)")
    q.set_defaults(fn=cmd_quickstart)

    w = sub.add_parser("world", help="the benchmark world").add_subparsers(dest="sub", required=True)
    g = w.add_parser("generate", help="generate a world (reused when the same config exists)")
    add_config_args(g, WorldConfig)
    g.add_argument("--out", default=str(DEFAULT_ROOT / "worlds"), help="worlds root (default: artifacts/worlds)")
    g.add_argument("--bitext", default=None, help="path of the Bitext CSV (default: the vendored copy)")
    g.add_argument("--force", action="store_true", help="replace an existing world with another config")
    g.set_defaults(fn=cmd_world_generate)
    s = w.add_parser("show", help="print a world's counts and headroom table")
    s.add_argument("world")
    s.set_defaults(fn=cmd_world_show)

    f = sub.add_parser("features", help="Feast feature store and verbalization").add_subparsers(dest="sub", required=True)
    for name, fn, hlp in [("apply", cmd_features_apply, "feast apply for a world"),
                          ("materialize", cmd_features_materialize, "load the online store"),
                          ("training-set", cmd_features_training_set, "point-in-time training set to parquet"),
                          ("prompt", cmd_features_prompt, "print the reasoner prompt of an evaluation session")]:
        c = f.add_parser(name, help=hlp)
        c.add_argument("--world", required=True, help="a generated world folder")
        c.add_argument("--feast-dir", default=None, help="registry + online store folder")
        c.set_defaults(fn=fn)
        if name == "training-set":
            c.add_argument("--split", choices=["train", "eval"], default=None)
            c.add_argument("--output", required=True, help="parquet file to write")
        if name == "prompt":
            c.add_argument("--session-id", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
        print(f"rgalign: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
