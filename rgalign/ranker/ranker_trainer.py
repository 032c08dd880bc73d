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
import torch
from tqdm.auto import tqdm

from rgalign.config import RankerConfig
from rgalign.metrics import MetricValue, evaluate_ranks, ranks_from_scores
from rgalign.ranker.baseline import TwoTowerAutoIntMMoE
from rgalign.ranker.data import FeatureSpec, RankerData, candidate_lists
from rgalign.ranker.inputs import RankerInputs, check_encoders
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


class RankerTrainer:
    """Trains one ranker on ``inputs`` (see ``rgalign.ranker.inputs.load_ranker_inputs``).

    Args:
        log_fn: called as ``log_fn(metrics: dict, step: int)`` after every epoch (MLflow hooks in here).
    """

    def __init__(self, cfg: RankerConfig, inputs: RankerInputs, progress: bool = True, log_fn=None):
        check_encoders(cfg, inputs)
        self.cfg, self.inputs, self.progress, self.log_fn = cfg, inputs, progress, log_fn
        self.spec = FeatureSpec.fit(inputs.train, inputs.n_intents, inputs.contract, user_buckets=cfg.user_buckets)
        self.data = {s: RankerData.build(getattr(inputs, s), self.spec, inputs.query[s],
                                         "true_intent" if s == "eval" else "clicked_intent")
                     for s in ("train", "val", "eval")}
        if len(self.data["train"]) == 0:
            raise ValueError("no clicked training sessions: the world is too small for a ranker")
        kb = inputs.kb
        fam = kb.family.astype("category").cat.codes.to_numpy() + 1
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, self.spec, inputs.n_intents, torch.as_tensor(inputs.semantic, dtype=torch.float32),
                                 torch.as_tensor(fam, dtype=torch.long), inputs.query["train"].shape[1])
        self.confidence = (ConfidencePredictor(cfg.d, self.data["train"].shown.shape[1], cfg.confidence_floor,
                                               span=cfg.confidence_span)
                           if cfg.model == "qe-rec" and cfg.confidence else None)
        # negatives: half popularity (training clicks, smoothed), half uniform, over intents launched in training
        launched = torch.as_tensor((kb.launch_day.to_numpy() == 0).astype(np.float32))
        clicks = torch.bincount(self.data["train"].clicked, minlength=inputs.n_intents + 1)[1:].float()
        pop = (clicks + 1) * launched
        self.neg_probs = 0.5 * pop / pop.sum() + 0.5 * launched / launched.sum()
        self.launched = launched.bool()
        if getattr(self.model, "gate", None) is not None:   # adaptive fusion reads each intent's training clicks
            self.model.gate.set_intent_clicks(torch.as_tensor(inputs.train_clicks if inputs.train_clicks is not None
                                                              else torch.cat([torch.zeros(1), clicks])))

    def _params(self):
        ps = list(self.model.parameters())
        return ps + (list(self.confidence.parameters()) if self.confidence is not None else [])

    def train_step(self, batch: RankerData, opt, gen: torch.Generator) -> float:
        cand, y, mask = candidate_lists(batch.clicked, batch.shown, self.cfg.n_neg, self.neg_probs, gen)
        x = batch.inputs
        if self.cfg.model == "qe-rec":
            z_u, z_i, z_q = self.model.user(x), self.model.intent_tower(cand), self.model.query_tower(batch.query)
            s = qe_score(z_u, z_i, z_q, self.model.weight(x, cand))
            wts = self.confidence(z_u, batch.click_pos) if self.confidence is not None else None
        else:
            s, wts = self.model(x, None, cand), None
        loss = weighted_intent_loss(s, y, wts, mask)
        if self.cfg.model == "qe-rec" and self.cfg.query_loss_weight > 0:
            # Eq. 5 once more on the query term alone (qe_score at w = 0 is cos(z_i, z_q)): deep supervision
            loss = loss + self.cfg.query_loss_weight * weighted_intent_loss(qe_score(z_u, z_i, z_q, 0.0), y, wts, mask)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self._params(), self.cfg.grad_clip)
        opt.step()
        return loss.item()

    def validate(self) -> float:
        """MRR of the clicked intent among the intents launched in training, on the validation days."""
        v = self.data["val"]
        if len(v) == 0:
            return float("nan")
        scores = score_all(self.model, v)
        scores[:, ~self.launched.numpy()] = -np.inf
        return float(np.mean(1 / (target_ranks(scores, v.clicked.numpy()) + 1)))

    def train(self) -> TrainResult:
        cfg, train = self.cfg, self.data["train"]
        gen = torch.Generator().manual_seed(cfg.seed)
        gate = list(self.model.gate.parameters()) if getattr(self.model, "gate", None) is not None else []
        rest = [p for p in self._params() if all(p is not g for g in gate)]
        # the fusion gate's three scalars move at most lr a step under Adam: they get their own rate, no decay
        groups = [{"params": rest}] + ([{"params": gate, "lr": cfg.fusion_lr, "weight_decay": 0.0}] if gate else [])
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        history, best, best_state, best_epoch, bad = [], -np.inf, None, 0, 0
        t0, seen = time.perf_counter(), 0
        for epoch in range(1, cfg.epochs + 1):
            self.model.train()
            perm = torch.randperm(len(train), generator=gen)
            losses = []
            bar = tqdm(range(0, len(train), cfg.batch_size), desc=f"{cfg.model} epoch {epoch}/{cfg.epochs}",
                       unit="step", disable=None if self.progress else True, leave=False)
            for i in bar:
                losses.append(self.train_step(train.subset(perm[i:i + cfg.batch_size]), opt, gen))
                seen += min(cfg.batch_size, len(train) - i)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
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
        return TrainResult(self.model, self.spec, cfg, history, best_epoch, train_seconds,
                           seen / max(train_seconds, 1e-9), self.confidence)


def model_ranks(model: torch.nn.Module, data: RankerData, query_half: bool = False) -> np.ndarray:
    """0-based rank of each session's target (``data.clicked``) among all intents under ``model`` (or its
    query half alone)."""
    return target_ranks(score_all(model, data, query_half=query_half), data.clicked.numpy())


def evaluate_model(model: torch.nn.Module, data: RankerData, n_boot: int = 200, seed: int = 0) -> dict[str, MetricValue]:
    """Table 2 metrics of ``model`` on ``data`` (its ``clicked`` = the evaluation week's true intents)."""
    return evaluate_ranks(model_ranks(model, data), data.user_ids, model.n_intents, n_boot=n_boot, seed=seed)
