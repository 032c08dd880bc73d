"""Stage 1 ranker training (paper Eq. 7): QE-Rec on a frozen query embedding, or the baseline.

    trainer = RankerTrainer(RankerConfig(model="qe-rec"), inputs)
    result = trainer.train()              # early stopping on validation MRR, best epoch restored
    table = evaluate_model(result.model, result.spec, inputs)

Determinism: one seed drives initialisation (``torch.manual_seed``), shuffling and negative sampling (a
dedicated ``torch.Generator``); on CPU, the same seed and inputs give the same weights.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from rgalign.config import RankerConfig
from rgalign.distributed import DistEnv
from rgalign.memory import release_memory
from rgalign.metrics import MetricValue, evaluate_ranks, ranks_from_scores
from rgalign.ranker.baseline import TwoTowerAutoIntMMoE
from rgalign.ranker.data import FeatureSpec, RankerData, candidate_lists, family_ids
from rgalign.ranker.inputs import RankerInputs, check_encoders, train_parts
from rgalign.ranker.loss import ConfidencePredictor, weighted_intent_loss
from rgalign.ranker.qe_rec import QERec, qe_score


def build_model(cfg: RankerConfig, spec: FeatureSpec, n_intents: int, semantic: torch.Tensor, families: torch.Tensor,
                d_e: int) -> torch.nn.Module:
    if cfg.model == "baseline":
        return TwoTowerAutoIntMMoE(spec.shape, n_intents, families, cfg.d, cfg.autoint_layers, cfg.heads, cfg.n_experts,
                                   cfg.user_buckets, cfg.dropout)
    return QERec(spec.shape, n_intents, semantic, d_e, cfg.d, cfg.w, cfg.user_buckets, cfg.dropout, cfg.heads,
                 cfg.user_activation, cfg.non_seq, cfg.user_tower, cfg.intent_id_std,
                 families if cfg.intent_family else None, cfg.intent_id_dropout, cfg.autoint_layers, cfg.n_experts,
                 cfg.fusion)


@torch.inference_mode()
def score_all(model: torch.nn.Module, data: RankerData, batch_size: int = 2048, query_half: bool = False) -> np.ndarray:
    """(B, n_intents) scores of every intent for every session (the intent index computed once);
    ``query_half``: Eq. 4's cos(z_i, z_q) alone (``QERec.query_half``)."""
    model.eval()
    index = model.intent_index()
    out = []
    for i in range(0, len(data), batch_size):
        x = {k: v[i:i + batch_size] for k, v in data.inputs.items()}
        e = data.query[i:i + batch_size]
        out.append((model.query_half(e, index) if query_half else model(x, e, intent_index=index)).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.n_intents), np.float32)


def target_ranks(scores: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
    """0-based rank of each session's target intent id among all intents (ties count against it)."""
    return ranks_from_scores(scores, np.asarray(target_ids) - 1)


@dataclass
class TrainResult:
    model: torch.nn.Module
    spec: FeatureSpec
    cfg: RankerConfig
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    samples_per_s: float = 0.0
    confidence: ConfidencePredictor | None = None
    shard_rows: list[np.ndarray] = field(default_factory=list)   # per epoch, the training rows this rank trained on


class RankingLoss(torch.nn.Module):
    """The training objective as one module (what DDP wraps): Eq. 5 on a batch's candidate lists, with the
    confidence weights and the query-half deep supervision.

    Inputs: ``x`` encoded features, ``query`` (B, d_e), ``cand`` / ``y`` / ``mask`` (B, N), ``click_pos`` (B,),
    ``n_global`` the global batch size (the confidence weights are normalised over it). Output: scalar loss.
    """

    def __init__(self, model: torch.nn.Module, confidence: ConfidencePredictor | None, cfg: RankerConfig,
                 dist: DistEnv):
        super().__init__()
        self.model, self.confidence, self.cfg, self.dist = model, confidence, cfg, dist

    def forward(self, x, query, cand, y, mask, click_pos, n_global):
        if self.cfg.model != "qe-rec":
            return weighted_intent_loss(self.model(x, None, cand), y, None, mask)
        z_u, z_i, z_q = self.model.user(x), self.model.intent_tower(cand), self.model.query_tower(query)
        s = qe_score(z_u, z_i, z_q, self.model.weight(x, cand))
        wts = None
        if self.confidence is not None:
            g = self.dist.gather(self.confidence.logits(z_u, click_pos), n_global)
            wts = self.confidence.weights(g)[self.dist.part(n_global)]
        loss = weighted_intent_loss(s, y, wts, mask)
        if self.cfg.query_loss_weight > 0:
            # Eq. 5 once more on the query term alone (qe_score at w = 0 is cos(z_i, z_q)): deep supervision
            loss = loss + self.cfg.query_loss_weight * weighted_intent_loss(qe_score(z_u, z_i, z_q, 0.0), y, wts, mask)
        return loss


class RankerTrainer:
    """Trains one ranker on ``inputs`` (see ``rgalign.ranker.inputs.load_ranker_inputs``).

    Args:
        log_fn: called as ``log_fn(metrics: dict, step: int)`` after every epoch (MLflow hooks in here).
        dist: this process's rank (``rgalign.distributed.DistEnv``; default one process). With several ranks
            (DDP) each trains on its part of every global batch; all ranks validate on all validation sessions
            and so stop at the same epoch.
    """

    def __init__(self, cfg: RankerConfig, inputs: RankerInputs, progress: bool = True, log_fn=None,
                 dist: DistEnv | None = None):
        check_encoders(cfg, inputs)
        self.cfg, self.inputs, self.progress, self.log_fn = cfg, inputs, progress, log_fn
        self.dist = dist or DistEnv()
        if len(inputs.train) == 0:
            raise ValueError("no clicked training sessions: the world is too small for a ranker")
        # the training split, a part at a time (one part when held in memory; ``load_ranker_inputs(shard_rows=)``)
        self.parts = train_parts(inputs)
        self.spec = FeatureSpec.fit(lambda cols: (load(cols)[0] for load in self.parts), inputs.n_intents,
                                    inputs.contract, user_buckets=cfg.user_buckets)
        self.data = {s: RankerData.build(getattr(inputs, s), self.spec, inputs.query[s],
                                         "true_intent" if s == "eval" else "clicked_intent")
                     for s in (["train"] if len(self.parts) == 1 else []) + ["val", "eval"]}
        kb = inputs.kb
        fam = family_ids(kb)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, self.spec, inputs.n_intents, torch.as_tensor(inputs.semantic, dtype=torch.float32),
                                 torch.as_tensor(fam, dtype=torch.long), inputs.d_e)
        first = self.parts[0](["shown_intents"])[0]
        shown_k = len(first.shown_intents.iloc[0]) if "shown_intents" in first and len(first) else 0
        self.confidence = (ConfidencePredictor(cfg.d, shown_k, cfg.confidence_floor, span=cfg.confidence_span)
                           if cfg.model == "qe-rec" and cfg.confidence else None)
        # negatives: half popularity (training clicks, smoothed), half uniform, over intents launched in training
        launched = torch.as_tensor((kb.launch_day.to_numpy() == 0).astype(np.float32))
        clicks = sum(np.bincount(pd.to_numeric(load(["clicked_intent"])[0].clicked_intent).fillna(0).clip(lower=0)
                                 .to_numpy(np.int64), minlength=inputs.n_intents + 1) for load in self.parts)
        clicks = torch.as_tensor(clicks)[1:].float()
        pop = (clicks + 1) * launched
        self.neg_probs = 0.5 * pop / pop.sum() + 0.5 * launched / launched.sum()
        self.launched = launched.bool()
        if getattr(self.model, "gate", None) is not None:   # adaptive fusion reads each intent's training clicks
            self.model.gate.set_intent_clicks(torch.as_tensor(inputs.train_clicks if inputs.train_clicks is not None
                                                              else torch.cat([torch.zeros(1), clicks])))
        self.objective = self.dist.wrap(RankingLoss(self.model, self.confidence, cfg, self.dist))
        self.rows_seen: list[list[torch.Tensor]] = [[]]   # per epoch (train() starts a list each), this rank's rows

    def _params(self):
        ps = list(self.model.parameters())
        return ps + (list(self.confidence.parameters()) if self.confidence is not None else [])

    def global_batch(self, train: RankerData, idx: torch.Tensor, gen: torch.Generator, offset: int = 0):
        """``(part, lists)``: this rank's rows of the global batch ``idx`` and their training lists (cand, y,
        mask; ``candidate_lists``). The negatives are drawn for the whole batch from the shared generator, so
        every rank draws the same and a part's lists are those of one process. ``offset``: the row number of
        ``train``'s first row in the whole training split (several data parts)."""
        cand, y, mask = candidate_lists(train.clicked[idx], train.shown[idx], self.cfg.n_neg, self.neg_probs, gen)
        part = self.dist.part(len(idx))
        self.rows_seen[-1].append(idx[part] + offset)
        return train.subset(idx[part]), (cand[part], y[part], mask[part])

    def train_part(self, i: int) -> RankerData:
        """Data part ``i`` of the training split, encoded (kept when the split is one part)."""
        if "train" in self.data:
            return self.data["train"]
        df, query = self.parts[i]()
        return RankerData.build(df, self.spec, query)

    def train_step(self, part: RankerData, lists, opt, n_global: int) -> float:
        """One optimizer step on this rank's ``part`` of a global batch of ``n_global`` sessions; returns the
        global batch's loss (the same on every rank)."""
        loss = self.objective(part.inputs, part.query, *lists, part.click_pos, n_global)
        loss = loss * self.dist.loss_scale(n_global)   # DDP averages the ranks: the gradient of the global mean
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self._params(), self.cfg.grad_clip)
        opt.step()
        return self.dist.mean(loss.detach()).item()

    def validate(self) -> float:
        """MRR of the clicked intent among the intents launched in training, on the validation days."""
        v = self.data["val"]
        if len(v) == 0:
            return float("nan")
        scores = score_all(self.model, v)
        scores[:, ~self.launched.numpy()] = -np.inf
        return float(np.mean(1 / (target_ranks(scores, v.clicked.numpy()) + 1)))

    def train(self) -> TrainResult:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        gate = list(self.model.gate.parameters()) if getattr(self.model, "gate", None) is not None else []
        rest = [p for p in self._params() if all(p is not g for g in gate)]
        # the fusion gate's three scalars move at most lr a step under Adam: they get their own rate, no decay
        groups = [{"params": rest}] + ([{"params": gate, "lr": cfg.fusion_lr, "weight_decay": 0.0}] if gate else [])
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        history, best, best_state, best_epoch, bad = [], -np.inf, None, 0, 0
        self.rows_seen = []
        t0, seen = time.perf_counter(), 0
        for epoch in range(1, cfg.epochs + 1):
            self.model.train()
            self.rows_seen.append([])
            losses = []
            # several data parts: a fresh part order each epoch, then a shuffle within each part
            order = torch.randperm(len(self.parts), generator=gen).tolist() if len(self.parts) > 1 else [0]
            sizes = self.inputs.train.sizes if len(self.parts) > 1 else [len(self.inputs.train)]
            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            bar = tqdm(total=sum(-(-n // cfg.batch_size) for n in sizes), desc=f"{cfg.model} epoch {epoch}/{cfg.epochs}",
                       unit="step", disable=None if self.progress else True, leave=False)
            for p in order:
                train = self.train_part(p)
                perm = torch.randperm(len(train), generator=gen)
                for i in range(0, len(train), cfg.batch_size):
                    idx = perm[i:i + cfg.batch_size]
                    losses.append(self.train_step(*self.global_batch(train, idx, gen, int(offsets[p])), opt, len(idx)))
                    seen += len(idx)
                    bar.update()
                    bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
                del train
                if len(self.parts) > 1:
                    release_memory()
            bar.close()
            val_mrr = self.validate()
            rec = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_mrr": val_mrr}
            history.append(rec)
            if self.log_fn:
                self.log_fn({k: v for k, v in rec.items() if k != "epoch"}, epoch)
            if self.progress:
                tqdm.write(f"{cfg.model} epoch {epoch}: loss {rec['train_loss']:.4f}  val MRR {val_mrr:.4f}")
            if val_mrr > best or np.isnan(val_mrr):
                best, best_epoch, bad = val_mrr, epoch, 0
                best_state = copy.deepcopy(self.model.state_dict())
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        train_seconds = time.perf_counter() - t0
        self.model.load_state_dict(best_state)
        self.model.eval()
        rows = [torch.cat(r).sort().values.numpy() for r in self.rows_seen]
        return TrainResult(self.model, self.spec, cfg, history, best_epoch, train_seconds,
                           seen / max(train_seconds, 1e-9), self.confidence, rows)


def model_ranks(model: torch.nn.Module, data: RankerData, query_half: bool = False) -> np.ndarray:
    """0-based rank of each session's target (``data.clicked``) among all intents under ``model`` (or its
    query half alone)."""
    return target_ranks(score_all(model, data, query_half=query_half), data.clicked.numpy())


def evaluate_model(model: torch.nn.Module, data: RankerData, n_boot: int = 200, seed: int = 0) -> dict[str, MetricValue]:
    """Table 2 metrics of ``model`` on ``data`` (its ``clicked`` = the evaluation week's true intents)."""
    return evaluate_ranks(model_ranks(model, data), data.user_ids, model.n_intents, n_boot=n_boot, seed=seed)
