"""The ``rgalign`` command. Subcommands are thin: they build a typed config and call the core library.

    rgalign quickstart --scale ci          the main job on the embedded default (world -> Feast -> summary)
    rgalign world generate|show            the benchmark world
    rgalign features apply|materialize|training-set|prompt   Feast and verbalization
"""
from __future__ import annotations

from rgalign.errors import MissingInputError

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path

from rgalign.config import (REPRODUCE_PRESETS, SCALES, RankerConfig, ReasonerCheckConfig, ReasonerConfig, ReproduceConfig,
                            ServeConfig,
                            WorldConfig)

DEFAULT_ROOT = Path("artifacts")


def add_config_args(p: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field, typed and documented from the field's metadata."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        typ = hints[f.name]
        base = next((t for t in typing.get_args(typ) if t is not type(None)), typ)
        kw = {"choices": sorted(REPRODUCE_PRESETS if cls is ReproduceConfig else SCALES)} if f.name == "scale" else {}
        if f.name == "model":
            kw = {"choices": ["qe-rec", "baseline"]}
        if f.name == "rga_method":
            kw = {"choices": ["sft-cl", "sft-dpo", "sft"]}
        if base is bool:
            kw, base = {"action": argparse.BooleanOptionalAction}, None
        p.add_argument("--" + f.name.replace("_", "-"), **({"type": base} if base else {}), default=f.default,
                       help=f"{f.metadata.get('help', '')} (default: {f.default})", **kw)


def add_tracking_args(p: argparse.ArgumentParser, optional: bool = True) -> None:
    """``--artifacts`` (root of the SQLite MLflow store and its runs), ``--tracking-uri`` and ``--no-tracking``."""
    p.add_argument("--artifacts", default=str(DEFAULT_ROOT), help="artifacts root (MLflow SQLite + runs)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: SQLite under --artifacts)")
    if optional:
        p.add_argument("--no-tracking", action="store_true", help="skip MLflow logging")


def config_from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def _world_summary(world: Path) -> str:
    from rgalign.contract.dataset import headroom
    from rgalign.metrics import format_table
    from rgalign.world.generate import load_manifest
    m = load_manifest(world)
    rows = headroom(world)
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


def cmd_data_validate(args) -> int:
    from rgalign.contract.validate import validate_dataset
    report = validate_dataset(args.path, args.contract)
    print(report.table())
    return 0 if report.ok else 1


def cmd_data_init(args) -> int:
    from rgalign.contract.scaffold import init_project
    for path in init_project(args.dir, args.name):
        print("wrote", path)
    print(f"next: edit {Path(args.dir) / 'contract.yaml'}, write the tables, then `rgalign data validate {args.dir}`")
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
    from rgalign.ranker.inputs import verbalize_frame
    fs = fs or _session(argparse.Namespace(world=world, feast_dir=None))
    s = fs.sessions("eval")
    if session_id is not None:
        s = s[s.session_id == session_id]
        if s.empty:
            raise MissingInputError(f"session_id {session_id} is not in the evaluation week of {world}")
    frame = fs.training_set(sessions=s.head(1))
    return ReasonerPrompt().plain(verbalize_frame(frame, pd.read_parquet(Path(world) / "kb.parquet"), fs.contract)[0])


def cmd_features_prompt(args) -> int:
    print(sample_prompt(Path(args.world), _session(args), args.session_id))
    return 0


def cmd_train_ranker(args) -> int:
    from rgalign.metrics import format_table
    from rgalign.ranker.stage1 import run_ranker, save_run
    from rgalign.contract.dataset import headroom
    from rgalign.distributed import DistEnv
    cfg = config_from_args(RankerConfig, args)
    dist = DistEnv.from_env().init()   # several ranks under torchrun: DDP, rank 0 logs, prints and saves
    if dist.main:
        print("config:", json.dumps(cfg.to_dict()) + (f"  ({dist.world} ranks, DDP)" if dist.enabled else ""))
    run = run_ranker(cfg, Path(args.world), tracking=not args.no_tracking, tracking_uri=args.tracking_uri,
                     root=args.artifacts, dist=dist)
    r = run.result
    if args.out:
        save_run(run, args.out, dist)
    if not dist.main:
        return 0
    print(format_table({**headroom(args.world), **run.table},
                       f"{Path(args.world).name}: evaluation week (true intents), 95% bootstrap CI"))
    print(f"\ntrain sessions {len(run.inputs.train):,}, best epoch {r.best_epoch}/{len(r.history)}, "
          f"{r.samples_per_s:,.0f} samples/s, {run.seconds:.0f} s in all")
    if run.model_uri:
        print(f"mlflow run {run.run_id}; model {run.model_uri}")
    return 0


def cmd_eval(args) -> int:
    import mlflow

    from rgalign.metrics import evaluate_ranks, format_table, paired_difference
    from rgalign.ranker.checkpoint import load_ranker
    from rgalign.ranker.data import RankerData
    from rgalign.ranker.inputs import load_ranker_inputs
    from rgalign.ranker.ranker_trainer import model_ranks
    from rgalign.tracking import tracking_uri, use
    from rgalign.contract.dataset import check_dataset, headroom
    use(tracking_uri(args.tracking_uri, args.artifacts))
    rows, ranks = dict(headroom(check_dataset(args.world))), {}
    for uri in args.model_uri:
        path = Path(mlflow.artifacts.download_artifacts(uri)) / "artifacts" / "checkpoint"
        model, spec, cfg, _ = load_ranker(path)
        inputs = load_ranker_inputs(args.world, cfg.query_encoder, cfg.query_dim, cfg.intent_encoder, cfg.val_days,
                                    cfg.max_train_sessions, cfg.seed, shard_rows=cfg.shard_rows)  # an LSA encoder refits on the same corpus
        data = RankerData.build(inputs.eval, spec, inputs.query["eval"], "true_intent")
        label = f"{cfg.model} ({uri})"
        ranks[label] = model_ranks(model, data)
        rows[label] = evaluate_ranks(ranks[label], data.user_ids, model.n_intents, seed=cfg.seed)
    print(format_table(rows, f"{Path(args.world).name}: evaluation week (true intents), 95% bootstrap CI"))
    if len(ranks) > 1:  # every model scored the same evaluation week: compare them session by session
        (first, r0), *others = ranks.items()
        diffs = {f"{label} - {first}": paired_difference(r, r0) for label, r in others}
        print("\n" + format_table(diffs, "difference to the first model, paired bootstrap 95% CI "
                                          "(an interval that excludes 0 is a real difference)"))
    # by segment: the true intent's training clicks and the user's (where text and the query path pay)
    from rgalign.metrics import segment_masks, segment_report
    from rgalign.workflow import user_training_clicks
    masks = segment_masks(inputs.eval.true_intent.to_numpy(), inputs.train_clicks,
                          user_training_clicks(args.world, inputs.eval.user_id))
    seg_rows, seg_diffs = segment_report(ranks, masks, reference=next(iter(ranks)))
    print("\n" + format_table(seg_diffs if seg_diffs else seg_rows,
                               "by segment: " + ("each model minus the first, paired bootstrap 95% CI" if seg_diffs
                                                 else "95% bootstrap CI")))
    return 0


def cmd_reasoner_build(args) -> int:
    from rgalign.reasoner.sources import build_reasoner
    cfg = config_from_args(ReasonerConfig, args)
    out = Path(args.out or Path(args.artifacts) / "reasoners" / f"{cfg.source}-s{cfg.seed}")
    path = build_reasoner(cfg, args.world, out)
    meta = json.loads((path / "rgalign_reasoner.json").read_text())
    print(f"reasoner {cfg.source} -> {path} (digest {meta['digest']}, {meta.get('seconds', '?')} s)")
    if not args.no_tracking:
        from rgalign.tracking import log_reasoner
        print("mlflow:", log_reasoner(path, args.tracking_uri, args.artifacts))
    return 0


def _contexts(world: Path, split: str, limit: int):
    import pandas as pd

    from rgalign.features.feast_io import FeatureStoreSession
    from rgalign.ranker.inputs import verbalize_frame
    fs = FeatureStoreSession(world)
    frame = fs.training_set(sessions=fs.sessions(split).head(limit))
    return frame, verbalize_frame(frame, pd.read_parquet(world / "kb.parquet"), fs.contract)


def _encoder(args):
    from rgalign.reasoner.ltp import LTPEncoder
    from rgalign.reasoner.sources import Reasoner, load_reasoner
    r = load_reasoner(args.reasoner)
    if getattr(args, "int8", False):
        from rgalign.reasoner.quantize import quantize_int8
        r = Reasoner(quantize_int8(r.model), r.tokenizer, r.version + "-int8", r.path, r.meta)
    return LTPEncoder(r, cache=getattr(args, "cache", None))


def cmd_reasoner_embed(args) -> int:
    import numpy as np
    enc = _encoder(args)
    _, ctx = _contexts(Path(args.world), args.split, args.limit)
    t = time.perf_counter()
    e = enc.embed(ctx)
    dt = time.perf_counter() - t
    np.save(args.output, e)
    print(f"LTP {e.shape} -> {args.output}: {len(ctx) / dt:.1f} prompts/s, cache hits {enc.hits}, "
          f"misses {enc.misses}, truncated {enc.truncated}")
    return 0


def cmd_reasoner_check(args) -> int:
    """Does the reasoner's LTP carry meaning: anisotropy, linear probe, query-only retrieval (exit 1 if not)."""
    from rgalign.config import ReasonerCheckConfig
    from rgalign.reasoner.check import check_reasoner
    cfg = config_from_args(ReasonerCheckConfig, args)
    report = check_reasoner(_encoder(args), Path(args.world), cfg)
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.metrics(), indent=2))
    if not report.passed:
        print(f"reasoner check FAILED for {args.reasoner}: its latent query does not carry meaning "
              "(rebuild it with distillation, e.g. `rgalign reasoner build --distil-teacher minilm`)", file=sys.stderr)
        return 1
    return 0


def cmd_reasoner_base(args) -> int:
    """Rebuild the main job's base reasoner of a world from scratch and say whether it matches the shipped one."""
    from rgalign.workflow import WorkflowConfig, build_base
    res = build_base(args.world, config_from_args(WorkflowConfig, args), args.out, args.threads)
    print(f"base reasoner {res['key']} -> {res['path']} (digest {res['digest']})")
    if res["shipped_digest"] is None:
        print("no base is shipped for this key (settings or world differ from the main job's defaults)")
    else:
        print(f"shipped base digest {res['shipped_digest']}: " + ("the rebuild matches" if res["matches"] else "DIFFERS"))
    return 0


def cmd_reasoner_generate(args) -> int:
    from rgalign.reasoner.generate import generate_queries
    enc = _encoder(args)
    _, ctx = _contexts(Path(args.world), args.split, args.limit)
    for c, q in zip(ctx, generate_queries(enc, ctx, sample=args.sample, seed=args.seed)):
        print(f"--- context\n{c}\n>>> {q}\n")
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


def _print_gate(res) -> None:
    print(res.gate.markdown())
    if res.registered:
        print(f"registered: reasoner v{res.registered['reasoner_version']}, ranker v{res.registered['ranker_version']} "
              "(alias candidate)")
    elif not res.gate.passed:
        print("nothing registered: the candidate did not pass the gate")


def cmd_align(args) -> int:
    from rgalign.workflow import WorkflowConfig, run
    cfg = config_from_args(WorkflowConfig, args)
    out = Path(args.out or Path(cfg.root) / "align" / Path(args.reasoner).name)
    res = run(cfg, out, world=args.world, reasoner=args.reasoner)
    for r in res.rounds:
        print(f"round {r['round']}: aligned reasoner {r['reasoner']}, Stage-3 ranker {r['ranker']}")
    _print_gate(res)
    print(f"aligned reasoner: {res.reasoner}")
    return 0 if res.gate.passed else 6


def cmd_models(args) -> int:
    from rgalign.registry import Registry, RegistryError
    reg = Registry(args.tracking_uri, args.artifacts)
    try:
        if args.sub == "list":
            for kind in ([args.kind] if args.kind else ["reasoner", "ranker"]):
                try:
                    rows = reg.versions(args.env, kind)
                except RegistryError as e:
                    if args.kind:
                        raise
                    print(f"{args.env}.{kind}: {e}")
                    continue
                print(f"{args.env}.{kind}")
                for r in rows:
                    metrics = " ".join(f"{k[5:]}={float(v):.4f}" for k, v in r["tags"].items() if k.startswith("eval."))
                    print(f"  v{r['version']:<4} {','.join(r['aliases']) or '-':<22} run={r['tags'].get('pipeline_run_id', '-')} "
                          f"world={r['tags'].get('world_digest', '-')} {metrics}")
        elif args.sub == "show":
            print(json.dumps(reg.show(args.env, args.kind, args.version), indent=1, default=str))
        elif args.sub == "promote":
            print(json.dumps(reg.promote(args.env, args.kind, args.version, args.to, args.gate_metric, args.margin,
                                         args.override, args.reason), indent=1))
        elif args.sub == "rollback":
            print(json.dumps(reg.rollback(args.env, args.kind, args.reason), indent=1))
        elif args.sub == "copy":
            v = reg.copy(args.kind, args.from_env, args.version, args.env)
            print(f"{args.from_env}.{args.kind}/{args.version} -> {args.env}.{args.kind} v{v} (candidate)")
        elif args.sub == "audit":
            for a in reg.audit(args.env, args.kind):
                print(f"{a.get('at')} {a.get('user')} {a.get('action'):<16} {a.get('model')} v{a.get('version')} "
                      f"{a.get('alias')} (was {a.get('previous') or '-'}) {a.get('gate', '')} {a.get('reason', '')}")
    except RegistryError as e:
        print(f"rgalign: error: {e}", file=sys.stderr)
        return 3
    return 0


def _pipeline_config(args):
    from rgalign.workflow import WorkflowConfig
    return config_from_args(WorkflowConfig, args)


def _runs_newest_first(root: Path) -> list[Path]:
    """The local training-pipeline run folders under ``root``, newest first."""
    return sorted((root / "kfp").glob("rgalign-training-*"), key=lambda p: p.stat().st_mtime)[::-1]


def _gate_report(root: Path) -> str | None:
    """The gate report of the newest local pipeline run under ``root``."""
    for run in _runs_newest_first(root):
        hits = sorted(run.rglob("gate/gate.md"))
        if hits:
            return hits[0].read_text()
    return None


def cmd_pipeline(args) -> int:
    from pipelines.run import compile_pipeline, run_local, run_monitoring_local, submit
    if args.sub == "monitor":
        cfg = _pipeline_config(args)
        try:
            out = run_monitoring_local(cfg, args.scenario or "", args.window)
        except RuntimeError as e:
            print(f"rgalign: error: monitoring pipeline failed: {e}", file=sys.stderr)
            return 5
        print(f"monitoring pipeline finished in {out['seconds']:.0f} s; reports under {out['pipeline_root']}")
        return 0
    if args.sub == "compile":
        print(f"compiled: {compile_pipeline(args.output, args.profile, args.profiles, args.pipeline)} "
              f"({args.pipeline} pipeline, profile {args.profile})")
    elif args.sub == "submit":
        try:
            run_id = submit(args.package, args.host, _pipeline_config(args), args.experiment, args.namespace)
        except ConnectionError as e:
            print(f"rgalign: error: {e}", file=sys.stderr)
            return 4
        print(f"submitted run {run_id} to {args.host}")
    else:
        cfg = _pipeline_config(args)
        print(json.dumps(dataclasses.asdict(cfg), indent=1))
        try:
            out = run_local(cfg, caching=not args.no_cache)
        except RuntimeError as e:
            print(f"rgalign: error: pipeline failed: {e} (the failing component's traceback is printed above)",
                  file=sys.stderr)
            return 5
        print(f"pipeline finished in {out['seconds']:.0f} s; artifacts in {out['pipeline_root']}\n")
        gate = _gate_report(Path(cfg.root).resolve())
        if gate:
            print(gate)
        ns = argparse.Namespace(sub="list", env=cfg.env, kind=None, tracking_uri=cfg.uri, artifacts=cfg.root)
        rc = cmd_models(ns) or _ui_hint(ns)
        if gate and "Evaluation gate: FAIL" in gate:
            print("\nnothing registered by this run: the candidate did not pass the gate (see above)")
            return 6
        hint = _next_steps(Path(cfg.root).resolve(), cfg.env) if cfg.register else None
        if hint:
            print(hint)
        return rc
    return 0


def _next_steps(root: Path, env: str) -> str | None:
    """The commands that serve and watch what the newest local pipeline run registered, with its real paths."""
    for run in _runs_newest_first(root):
        worlds = sorted((run / "prepare-features" / "world").glob("*/contract.yaml"))
        if worlds:
            w = worlds[0].parent
            f = run / "prepare-features" / "feast" / w.name
            a, ws = f"--artifacts {root}", root / "evidently"
            return ("\nNext: serve the candidate, replay an A/B week against the popularity list, open the dashboard\n"
                    f"  rgalign serve --env {env} --alias candidate {a}   (features from the run's dataset)\n"
                    f"  rgalign monitor ab --env {env} --world {w} --feast-dir {f} --champion candidate "
                    f"--challenger popularity --days 7 --workspace {ws} {a}\n"
                    f"  rgalign ui --workspace {ws}   (then open http://127.0.0.1:8000)")
    return None


def _ui_hint(args) -> int:
    from rgalign.tracking import tracking_uri
    print(f"\nMLflow UI: mlflow ui --backend-store-uri {tracking_uri(args.tracking_uri, args.artifacts)} "
          "--host 127.0.0.1 --port 5000   (then open http://127.0.0.1:5000)")
    return 0


def cmd_step(args) -> int:
    from rgalign.distributed import DistEnv
    from rgalign.workflow import launch_step
    kwargs = json.loads(Path(args.args[1:]).read_text() if args.args.startswith("@") else args.args)
    out = launch_step(args.name, kwargs)
    if args.result and DistEnv.from_env().main:
        Path(args.result).parent.mkdir(parents=True, exist_ok=True)
        Path(args.result).write_text(json.dumps(out))
    return 0


def cmd_reproduce(args) -> int:
    from rgalign.reproduce import run_reproduce
    cfg = config_from_args(ReproduceConfig, args)
    print(json.dumps(cfg.to_dict(), indent=1))
    run_reproduce(cfg)
    out = Path(cfg.out)
    print((out / "reproduce.md").read_text())
    print(f"written: {out / 'reproduce.md'}, {out / 'reproduce.json'}, {out / 'reproduce.png'}")
    return 0


def cmd_serve(args) -> int:
    """The local KServe server of a registry alias (models:/<env>.ranker@<alias> and its parent reasoner)."""
    from rgalign.recommend import Recommender
    from rgalign.registry import Registry
    from serving.server import serve
    reg = Registry(args.tracking_uri, args.artifacts)
    b = reg.serving_bundle(args.env, args.alias)
    print(f"serving {_version(b['ranker'])} (@{args.alias})" + (f" + {_version(b['reasoner'])}" if "reasoner" in b else "")
          + f" on http://{args.host}:{args.port}  (V1 /v1/models/recommend:predict, V2 /v2/models/recommend/infer)",
          flush=True)
    cfg = config_from_args(ServeConfig, args)
    rec = Recommender.from_registry(reg, args.env, args.alias, args.world, args.feast_dir, **cfg.recommender_kw())
    if rec.store is not None and args.world is None:
        print(f"features: {rec.store.world_dir} (Feast {rec.store.feast_dir}), from the version's lineage", flush=True)
    elif rec.store is None:
        print("no feature store: the version's lineage names no dataset on this machine, so only the reasoner and "
              "ranker models are served; pass --world DIR [--feast-dir DIR] for recommend", flush=True)
    serve(rec, cfg)
    return 0


def cmd_deploy(args) -> int:
    from rgalign.config import DeployConfig
    from rgalign.registry import Registry
    from serving.manifests import render
    sel = dict(kv.split("=", 1) for kv in args.node_selector or [])
    cfg = dataclasses.replace(config_from_args(DeployConfig, args), node_selector=sel or None)
    reg = Registry(args.tracking_uri, args.artifacts)
    champion = reg.serving_bundle(cfg.env, cfg.alias)
    challenger = reg.serving_bundle(cfg.env, cfg.challenger) if cfg.challenger else None
    for path in render(champion, cfg, args.out, challenger):
        print(f"written {path} (validated against the KServe InferenceService CRD schema)")
    return 0


def _version(entry: dict) -> str:
    """A registry bundle entry as people read it: ``dev.ranker v3``."""
    return f"{entry['name']} v{entry['version']}"


def _arm(ref: str, args, other: str = "champion"):
    """An A/B arm and what it serves: a recommend endpoint URL, ``popularity`` (the floor), or a registry
    alias/version served in process. The popularity arm reads its list through the other arm's registry version
    (``other``) when that is one, else through the champion."""
    def served(r: str) -> bool:      # a registry alias or version, served in process
        return r != "popularity" and not r.startswith(("http://", "https://"))
    if ref.startswith(("http://", "https://")):
        return ref, ref
    from rgalign.recommend import Recommender
    from rgalign.registry import Registry
    via = ref if served(ref) else other if served(other) else "champion"
    rec = Recommender.from_registry(Registry(args.tracking_uri, args.artifacts), args.env, via, args.world,
                                    args.feast_dir)
    version = _version(rec.bundle["ranker"])
    if served(ref):
        return rec.recommend, f"{version} (@{ref})" if not ref.isdigit() else version
    return rec.popularity, f"popularity (the training clicks of {version})"


def cmd_monitor(args) -> int:
    from monitoring import jobs
    if args.sub == "ab":
        judge = None
        if args.judge_url:
            import pandas as pd
            from rgalign.chat import ChatClient
            from rgalign.judge import IntentJudge
            client = ChatClient(args.judge_url, args.judge_model, max_tokens=8)
            client.check("judge", "--judge-url")
            judge = IntentJudge(client, pd.read_parquet(Path(args.world) / "kb.parquet"))
        (champion, t_champion), (challenger, t_challenger) = (_arm(args.champion, args, args.challenger),
                                                              _arm(args.challenger, args, args.champion))
        print(f"champion: {t_champion}\nchallenger: {t_challenger}", flush=True)
        res = jobs.run_ab(args.world, champion, challenger, args.share, args.days, args.max_sessions, args.out,
                          args.workspace, judge=judge, targets={"champion": t_champion, "challenger": t_challenger})
        print(res["table"])
        if args.out:
            print(f"log: {args.out} ({len(res['log']):,} sessions)")
        return 0
    if args.sub == "drift":
        ranker, reasoner = None, args.reasoner
        models = {"reasoner": args.reasoner} if args.reasoner else {}
        if args.ranker:
            from rgalign.registry import Registry
            b = Registry(args.tracking_uri, args.artifacts).serving_bundle(args.env, args.ranker)
            ranker, reasoner = b["ranker"]["dir"], args.reasoner or b.get("reasoner", {}).get("dir")
            models = {k: _version(v) for k, v in b.items() if isinstance(v, dict) and "version" in v}
        res = jobs.run_drift(args.world, args.window, args.scenario, reasoner, args.current_reasoner,
                             args.workspace, args.max_share, ranker=ranker, models=models)
        f = res["features"]
        print(f"feature drift ({f.methods['num_method']} / {f.methods['cat_method']}, {f.n_reference:,} vs "
              f"{f.n_current:,} sessions): {len(f.drifted)}/{len(f.per_column)} columns")
        print("| column | method | score | drift |\n|---|---|---:|---|")
        for c, v in sorted(f.per_column.items()):
            print(f"| {c} | {v['method']} | {v['score']:.4f} | {'yes' if v['drift'] else ''} |")
        if res["embedding"]:
            e = res["embedding"]
            print(f"query-embedding drift: {e['method']} = {e['score']:.3f} (threshold {e['threshold']}): "
                  f"{'DRIFT' if e['drift'] else 'no drift'}")
        if res["scores"]:
            v = res["scores"].per_column["top_score"]
            from monitoring.drift import P_VALUE_METHODS
            pvalue = v["method"] in P_VALUE_METHODS               # a statistical test's p-value, else a distance
            rule = f"drift below p {v['threshold']}" if pvalue else f"threshold {v['threshold']}"
            print(f"ranker top-1 score drift: {v['method']} {'p' if pvalue else 'distance'} = {v['score']:.4f} "
                  f"({rule}): {'DRIFT' if v['drift'] else 'no drift'}")
        g = res["gate"]
        print("drift gate: " + ("FIRED: " + "; ".join(g.reasons) if g.fired else "quiet"))
        if g.fired and args.retrain:
            from pipelines.run import run_local
            from rgalign.workflow import WorkflowConfig
            print("starting a retraining run (rgalign pipeline run) ...", flush=True)
            run_local(WorkflowConfig(env=args.env, artifacts=args.artifacts, tracking_uri=args.tracking_uri or ""))
        return 3 if (g.fired and args.gate) else 0
    if args.sub == "publish":
        import pandas as pd
        from monitoring.workspace import publish
        log = pd.read_parquet(args.log)
        n = publish(args.workspace, jobs.publish_inputs(log))
        print(f"published {args.log} to {args.workspace}: the project holds {n} snapshots")
        return 0
    raise ValueError(f"unknown monitor command {args.sub}")


def cmd_ui(args) -> int:
    """The Evidently UI over the workspace, on loopback."""
    import os
    exe = Path(sys.executable).with_name("evidently")
    if not Path(args.workspace).is_dir():
        raise FileNotFoundError(f"workspace {args.workspace} does not exist; publish to it first "
                                "(rgalign monitor ab|drift|publish --workspace DIR)")
    cmd = [str(exe), "ui", "--workspace", str(args.workspace), "--host", args.host, "--port", str(args.port)]
    print(" ".join(cmd), flush=True)
    print(f"Evidently UI on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    os.execv(cmd[0], cmd)
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

    da = sub.add_parser("data", help="your own data: the data contract").add_subparsers(dest="sub", required=True)
    v = da.add_parser("validate", help="check a dataset folder against its contract.yaml (reads only; exit 1 on "
                      "problems, each naming the table, column, a sample row and the fix)")
    v.add_argument("path", help="the dataset folder (its tables and contract.yaml)")
    v.add_argument("--contract", default=None, help="another contract.yaml (default: PATH/contract.yaml)")
    v.set_defaults(fn=cmd_data_validate)
    v = da.add_parser("init", help="scaffold contract.yaml, a Feast repo and a README for a new project")
    v.add_argument("dir", help="the new project's dataset folder")
    v.add_argument("--name", default=None, help="the project's name (default: the folder's name)")
    v.set_defaults(fn=cmd_data_init)

    t = sub.add_parser("train", help="train a model").add_subparsers(dest="sub", required=True)
    r = t.add_parser("ranker", help="Stage 1: train QE-Rec or the baseline, evaluate, log to MLflow")
    add_config_args(r, RankerConfig)
    r.add_argument("--world", required=True, help="a generated world folder")
    r.add_argument("--out", default=None, help="also save the checkpoint here (rgalign.ranker.checkpoint; with "
                                               "several ranks, each writes shards/rank<r>.npz: the rows it trained on, per epoch)")
    add_tracking_args(r)
    r.set_defaults(fn=cmd_train_ranker)
    e = sub.add_parser("eval", help="evaluate logged rankers on a world's evaluation week")
    e.add_argument("--world", required=True)
    e.add_argument("--model-uri", nargs="+", required=True, help="MLflow model URIs (runs:/<id>/ranker, models:/...)")
    add_tracking_args(e, optional=False)
    e.set_defaults(fn=cmd_eval)

    rs = sub.add_parser("reasoner", help="the LLM query reasoner").add_subparsers(dest="sub", required=True)
    b = rs.add_parser("build", help="build + pre-train a tiny/small reasoner, or convert smollm2; log to MLflow")
    add_config_args(b, ReasonerConfig)
    b.add_argument("--world", required=True, help="world whose training weeks feed the pre-training corpus")
    b.add_argument("--out", default=None, help="output directory (default: artifacts/reasoners/<source>-s<seed>)")
    add_tracking_args(b)
    b.set_defaults(fn=cmd_reasoner_build)
    for name, fn in (("embed", cmd_reasoner_embed), ("generate", cmd_reasoner_generate)):
        c = rs.add_parser(name, help="LTP embeddings of sessions" if name == "embed" else "write user questions")
        c.add_argument("--reasoner", required=True, help="reasoner directory or MLflow URI (runs:/<id>/reasoner)")
        c.add_argument("--world", required=True)
        c.add_argument("--split", choices=["train", "eval"], default="eval")
        c.add_argument("--limit", type=int, default=1000 if name == "embed" else 5)
        c.add_argument("--int8", action="store_true", help="dynamic int8 quantization (serving variant)")
        if name == "embed":
            c.add_argument("--output", required=True, help=".npy file to write")
            c.add_argument("--cache", default=None, help="LTP cache (SQLite file)")
        else:
            c.add_argument("--sample", action="store_true", help="nucleus sampling instead of greedy")
            c.add_argument("--seed", type=int, default=0)
        c.set_defaults(fn=fn)
    c = rs.add_parser("check", help="does the LTP carry meaning: anisotropy, linear probe of the intent family, "
                                    "query-only retrieval of held-out utterances vs MiniLM and TF-IDF (exit 1: no)")
    c.add_argument("--reasoner", required=True, help="reasoner directory or MLflow URI (models:/dev.reasoner@champion)")
    c.add_argument("--world", required=True, help="world whose evaluation week and KB are read")
    c.add_argument("--int8", action="store_true", help="check the dynamic int8 variant served on CPU")
    c.add_argument("--json", default=None, help="also write the figures to this JSON file")
    c.add_argument("--artifacts", default=str(DEFAULT_ROOT), help="artifacts root (cache of the reference encoders' scores)")
    add_config_args(c, ReasonerCheckConfig)
    c.set_defaults(fn=cmd_reasoner_check)

    from rgalign.workflow import STAGE_FIELDS, WorkflowConfig
    c = rs.add_parser("base", help="rebuild the main job's base reasoner of a world (the pipeline's reasoner settings), "
                                   "check it, and compare it with the base shipped in the package")
    add_config_args(c, WorkflowConfig, skip=tuple(f.name for f in dataclasses.fields(WorkflowConfig)
                                                  if STAGE_FIELDS.get(f.name, ("",))[0] != "reasoner"
                                                  and f.name != "check_reasoner"))
    c.add_argument("--world", required=True, help="a generated world folder (the main job's: ci scale, seed 0)")
    c.add_argument("--out", default=None, help="output directory (default: replace the shipped copy in the package, "
                                               "rgalign/reasoner/bases/<base_key>)")
    c.add_argument("--threads", type=int, default=2, help="torch threads of the build: builds are bit-identical at the "
                                                          "same count only (the shipped base used 2)")
    c.set_defaults(fn=cmd_reasoner_base)
    al = sub.add_parser("align", help="the training workflow in this process on an existing world and reasoner: "
                                      "Stage 1 + baseline -> Stage 2 (teachers, reward, best-of-N, RG-SFT, RG-CL | "
                                      "RG-DPO) -> Stage 3 -> gate -> registry (the pipeline's steps, without kfp)")
    # the reasoner and the world exist already: their build settings would do nothing here
    add_config_args(al, WorkflowConfig, skip=("scale", "world_seed", "reasoner_steps", "pretrain_batch", "corpus_sessions",
                                              "max_prompt_tokens", "distil_teacher", "reuse_base"))
    al.add_argument("--world", required=True, help="a generated world folder")
    al.add_argument("--reasoner", required=True, help="the raw reasoner directory (rgalign reasoner build)")
    al.add_argument("--out", default=None, help="run folder (default: <artifacts-root>/align/<reasoner name>)")
    al.set_defaults(fn=cmd_align)

    mo = sub.add_parser("models", help="the MLflow model registry").add_subparsers(dest="sub", required=True)
    for name, hlp in (("list", "versions, aliases, lineage and metrics"), ("show", "one version (number or alias)"),
                      ("promote", "move an alias (candidate -> challenger -> champion) through the gate"),
                      ("rollback", "champion back to the version it replaced"), ("audit", "every registry move"),
                      ("copy", "promote across environments: copy a version into <env>.<kind> as candidate")):
        c = mo.add_parser(name, help=hlp)
        c.add_argument("--env", default="dev", help="environment of the registered models (dev, staging, prod)")
        c.add_argument("--kind", choices=["reasoner", "ranker", "reasoner-base"], required=name in ("show", "promote", "rollback", "copy"))
        add_tracking_args(c, optional=False)
        if name in ("show", "promote", "copy"):
            c.add_argument("--version", required=True, help="version number or alias (e.g. candidate)")
        if name == "copy":
            c.add_argument("--from-env", required=True, help="source environment (e.g. dev); --env is the target")
        if name == "promote":
            c.add_argument("--to", required=True, choices=["candidate", "challenger", "champion"])
            c.add_argument("--gate-metric", default="MRR", help="offline metric compared with the champion")
            c.add_argument("--margin", type=float, default=0.005, help="non-inferiority margin of the gate metric "
                                                                        "(absolute; 0.005 = 0.5 points)")
            c.add_argument("--override", action="store_true", help="promote despite the gate (recorded; needs --reason)")
        if name in ("promote", "rollback"):
            c.add_argument("--reason", default=None, help="why (kept in the audit trail)")
        c.set_defaults(fn=cmd_models)

    pl = sub.add_parser("pipeline", help="the Kubeflow training pipeline").add_subparsers(dest="sub", required=True)
    for name, hlp in (("run", "run locally with kfp.local (caching on), then print the registry"),
                      ("compile", "compile to YAML with a cluster profile's Kubernetes settings"),
                      ("submit", "submit a compiled package to a Kubeflow Pipelines API server"),
                      ("monitor", "run the monitoring pipeline (drift gate -> retraining request) with kfp.local")):
        c = pl.add_parser(name, help=hlp)
        if name in ("run", "submit", "monitor"):
            add_config_args(c, WorkflowConfig)
        if name == "run":
            c.add_argument("--no-cache", action="store_true", help="disable kfp.local step caching")
        if name == "monitor":
            c.add_argument("--scenario", default=None, choices=["logistics"], help="a drifted scenario")
            c.add_argument("--window", type=int, default=2000, help="sessions per drift window")
        if name == "compile":
            c.add_argument("--output", default="pipelines/rgalign_training.yaml")
            c.add_argument("--profile", default="gpu-a100", help="cluster profile name")
            c.add_argument("--profiles", default=None, help="profiles file (default: pipelines/cluster_profiles.yaml)")
            c.add_argument("--pipeline", default="training", choices=["training", "monitoring"])
        if name == "submit":
            c.add_argument("--package", default="pipelines/rgalign_training.yaml")
            c.add_argument("--host", required=True, help="Kubeflow Pipelines API, e.g. http://127.0.0.1:8888")
            c.add_argument("--experiment", default="rgalign")
            c.add_argument("--namespace", default=None)
        c.set_defaults(fn=cmd_pipeline)

    st = sub.add_parser("step", help="run one pipeline step on this process's rank (what torchrun or a Kubeflow "
                                     "Trainer TrainJob runs: every rank calls it, rank 0 saves and logs)")
    st.add_argument("name", choices=["train-ranker", "rga"], help="the step (rgalign.workflow.rank_steps)")
    st.add_argument("--args", required=True, help="the step's keyword arguments as JSON, or @FILE holding it "
                                                  "(cfg: the WorkflowConfig dict; paths as seen by the ranks)")
    st.add_argument("--result", default=None, help="write the step's metrics here as JSON (rank 0)")
    st.set_defaults(fn=cmd_step)
    rp = sub.add_parser("reproduce", help="the paper's Tables 2-4 (Stages 1-3, 3 seeds) as markdown + a plot")
    add_config_args(rp, ReproduceConfig)
    rp.set_defaults(fn=cmd_reproduce)

    mon = sub.add_parser("monitor", help="A/B replay, drift, drift gate, Evidently workspace").add_subparsers(
        dest="sub", required=True)
    ab = mon.add_parser("ab", help="replay evaluation sessions through champion and challenger; log + tests")
    ab.add_argument("--world", required=True)
    ab.add_argument("--champion", required=True, help="recommend endpoint URL (V1), registry alias/version, or popularity")
    ab.add_argument("--challenger", required=True, help="recommend endpoint URL (V1), registry alias/version, or popularity")
    ab.add_argument("--share", type=float, default=0.5, help="challenger traffic share (sticky per user)")
    ab.add_argument("--days", type=int, default=2, help="days of the evaluation week to replay")
    ab.add_argument("--max-sessions", type=int, default=2000, help="cap on replayed sessions (a seeded sample of the "
                                                                  "replayed days)")
    ab.add_argument("--out", default=None, help="session log parquet (never overwritten)")
    ab.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint of the intent-hit LLM judge")
    ab.add_argument("--judge-model", default="gpt-5-mini", help="the judge's model name")
    dr_ = mon.add_parser("drift", help="feature / embedding drift of the evaluation week vs the training weeks")
    dr_.add_argument("--world", required=True)
    dr_.add_argument("--window", type=int, default=2000, help="sessions per window")
    dr_.add_argument("--scenario", default=None, choices=["logistics"], help="apply a drifted scenario")
    dr_.add_argument("--reasoner", default=None, help="reasoner of the reference embeddings (enables embedding drift)")
    dr_.add_argument("--current-reasoner", default=None, help="reasoner of the current embeddings (default: same)")
    dr_.add_argument("--ranker", default=None, help="registry alias or version of a ranker: adds the drift of its "
                                                   "top-1 score (with its parent reasoner's embeddings)")
    dr_.add_argument("--max-share", type=float, default=0.2, help="gate: largest tolerated share of drifted columns")
    dr_.add_argument("--gate", action="store_true", help="exit 3 when the drift gate fires")
    dr_.add_argument("--retrain", action="store_true", help="start `rgalign pipeline run` when the gate fires")
    pu = mon.add_parser("publish", help="publish an A/B log to the Evidently workspace")
    pu.add_argument("--log", required=True)
    for c in (ab, dr_, pu):
        c.add_argument("--workspace", default=None if c is not pu else "artifacts/evidently",
                       required=c is pu, help="Evidently workspace folder to publish snapshots to")
        c.add_argument("--env", default="dev")
        c.add_argument("--feast-dir", default=None)
        add_tracking_args(c, optional=False)
        c.set_defaults(fn=cmd_monitor)
    ui = sub.add_parser("ui", help="the Evidently UI (dashboards) on 127.0.0.1")
    ui.add_argument("--workspace", default="artifacts/evidently")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=8000)
    ui.set_defaults(fn=cmd_ui)

    sv = sub.add_parser("serve", help="serve a registry alias with KServe on 127.0.0.1 (V1 + V2, recommend)")
    sv.add_argument("--env", default="dev")
    sv.add_argument("--alias", default="champion", help="registry alias or version of the ranker")
    sv.add_argument("--world", default=None, help="dataset whose Feast online store serves features (recommend; "
                    "default: the dataset of the served version's training run, from its registry lineage)")
    sv.add_argument("--feast-dir", default=None, help="Feast registry + online store folder (default: beside the world)")
    add_config_args(sv, ServeConfig)
    add_tracking_args(sv, optional=False)
    sv.set_defaults(fn=cmd_serve)

    dp = sub.add_parser("deploy", help="KServe manifests").add_subparsers(dest="sub", required=True)
    dr = dp.add_parser("render", help="InferenceService YAML (reasoner, ranker with A/B split, vLLM reasoner)")
    from rgalign.config import DeployConfig
    add_config_args(dr, DeployConfig, skip=("node_selector",))
    dr.add_argument("--node-selector", action="append", metavar="KEY=VALUE", help="node selector of GPU pods")
    dr.add_argument("--out", default="deploy", help="folder for the manifests")
    add_tracking_args(dr, optional=False)
    dr.set_defaults(fn=cmd_deploy)

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
    except (ValueError, FileNotFoundError, FileExistsError) as e:   # user errors (MissingInputError is one)
        print(f"rgalign: error: {e}", file=sys.stderr)
        return 2
    # anything else (a KeyError, AttributeError, ... from a bug) propagates with its traceback


if __name__ == "__main__":
    sys.exit(main())
