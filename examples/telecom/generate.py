"""Generate the telecom example dataset: a mobile operator's support bot, following ``contract.yaml`` here.

    python examples/telecom/generate.py --out artifacts/datasets/telecom [--users 2000 --seed 0]

How the labels are made: each session draws a *true* intent from a small hand-written model of why
subscribers open support (an overdue bill -> pay / arrange payment, an outage nearby -> outage status / no
signal, roaming -> roaming topics, the screen the chat was opened from, heavy data use, a repeat of a recent
topic), then the slot (plan, contract, handset, region) matches the subscriber's own with p = 0.85. A noisy
production policy shows 5 intents; the click is position-biased (none when the true intent is not shown,
plus 5% noise clicks). ``eval_labels`` holds the true intents of the last week (the refined labels). The
eSIM intents launch in the evaluation week (cold start). Nothing of this model is visible to rgalign-rec:
it sees the tables and the contract only.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
DAY, DAYS, EVAL_DAYS = 86_400, 35, 7
START = pd.Timestamp("2026-09-01", tz="UTC")
SLOTS = {"plan": ["Basic", "Standard", "Premium", "Family"], "contract": ["Prepaid", "Postpaid", "Business"],
         "handset": ["Android Phone", "iPhone", "Feature Phone", "Home Router"],
         "region": ["Europe", "Asia", "Americas"]}
# family -> (slot, title, description)
FAMILIES = {
    "pay_bill": ("plan", "Pay my {plan} plan bill", "Pay the current bill of a {plan} plan by card or bank transfer."),
    "bill_dispute": ("plan", "Dispute a charge on my {plan} bill", "Question an unexpected charge on a {plan} plan bill."),
    "payment_arrangement": (None, "Set up a payment arrangement", "Split an overdue bill into instalments."),
    "reactivate_line": ("contract", "Reactivate a suspended {contract} line", "Lift the suspension of a {contract} line."),
    "no_signal": ("handset", "No signal on my {handset}", "Troubleshoot a {handset} that shows no network signal."),
    "slow_data": ("handset", "Slow mobile data on my {handset}", "Fix slow or dropping mobile data on a {handset}."),
    "outage_status": (None, "Is there a network outage near me", "Live status of network outages and repairs."),
    "roaming_on": ("region", "Turn on roaming in {region}", "Activate roaming before or while travelling in {region}."),
    "roaming_charges": ("region", "Roaming charges in {region}", "Prices of calls, texts and data in {region}."),
    "upgrade_plan": ("plan", "Upgrade from the {plan} plan", "Move from {plan} to a plan with more data."),
    "data_addon": ("plan", "Buy extra data for my {plan} plan", "Add a data pack to a {plan} plan this month."),
    "port_out": ("contract", "Move my number to another operator ({contract})", "Porting code and timing for a {contract} line."),
    "cancel_contract": ("contract", "Cancel my {contract} contract", "Notice period and fees to end a {contract} contract."),
    "sim_replacement": ("handset", "Replace the SIM of my {handset}", "Order a new SIM card for a {handset}."),
    "esim": ("handset", "Switch my {handset} to eSIM", "Move a {handset} line to an eSIM profile."),
}
STATUS, OPENED = ["Active", "Bill Overdue", "Suspended", "Porting Out"], ["App Home", "Bill Screen", "Network Screen",
                                                                           "SMS Link", "Website"]


def build_kb() -> pd.DataFrame:
    rows = []
    for fam, (slot, title, desc) in FAMILIES.items():
        for v in (SLOTS[slot] if slot else [None]):
            fmt = {slot: v} if slot else {}
            rows.append({"family": fam, "slot": slot or "", "slot_value": v or "", "title": title.format(**fmt),
                         "description": desc.format(**fmt), "launch_day": DAYS - EVAL_DAYS if fam == "esim" else 0})
    kb = pd.DataFrame(rows)
    kb.insert(0, "intent_id", np.arange(1, len(kb) + 1))
    return kb


def family_logits(status, outage, roaming, opened, heavy, last_fam) -> dict[str, np.ndarray]:
    n = len(status)
    z = {f: np.zeros(n) for f in FAMILIES}
    z["pay_bill"] += 1.0 + 2.5 * (status == 1) + 1.0 * (status == 2) + 1.5 * (opened == 1)
    z["bill_dispute"] += 0.3 + 1.2 * (opened == 1)
    z["payment_arrangement"] += -1.0 + 2.5 * (status == 1)
    z["reactivate_line"] += -1.5 + 3.5 * (status == 2)
    z["no_signal"] += 0.2 + 2.0 * outage + 1.2 * (opened == 2)
    z["slow_data"] += 0.4 + 0.8 * outage + 1.2 * (opened == 2)
    z["outage_status"] += -0.8 + 3.0 * outage + 0.8 * (opened == 2)
    z["roaming_on"] += -1.5 + 3.0 * (roaming > 0)
    z["roaming_charges"] += -1.5 + 2.6 * (roaming > 0)
    z["upgrade_plan"] += 0.0 + 1.0 * heavy
    z["data_addon"] += -0.5 + 1.8 * heavy
    z["port_out"] += -2.0 + 3.5 * (status == 3)
    z["cancel_contract"] += -1.0 + 1.5 * (status == 3)
    z["sim_replacement"] += -0.5
    z["esim"] += -0.5
    for k, f in enumerate(FAMILIES):
        z[f] += 1.5 * (last_fam == k)
    return z


def generate(out: str | Path, users: int = 2000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    kb = build_kb()
    fam_idx = {f: k for k, f in enumerate(FAMILIES)}
    kb_fam = kb.family.map(fam_idx).to_numpy()
    uid = np.arange(1, users + 1)
    plan, contract = rng.integers(1, 5, users), rng.choice([1, 2, 3], users, p=[.35, .55, .1])
    handset = rng.choice([1, 2, 3, 4], users, p=[.5, .35, .08, .07])
    tenure0, heavy_user = rng.integers(20, 3000, users), rng.random(users) < .3
    profiles = pd.concat([pd.DataFrame({
        "user_id": uid, "event_timestamp": START + pd.Timedelta(days=d) - pd.Timedelta(hours=1),
        "plan": plan, "contract_type": contract, "handset": handset, "tenure_days": tenure0 + d,
        "data_used_gb": np.round(np.where(heavy_user, rng.gamma(6, 5, users), rng.gamma(2, 2, users)), 2)})
        for d in (0, 14, 28)], ignore_index=True)

    n_sess = rng.poisson(3.5, users) + 1
    user = np.repeat(np.arange(users), n_sess)
    t = rng.integers(0, DAYS * DAY, len(user))
    order = np.lexsort((t, user))               # each subscriber's sessions in time order
    user, t = user[order], t[order]
    n = len(user)
    status = rng.choice(4, n, p=[.7, .15, .08, .07])
    outage, roaming = (rng.random(n) < .12).astype(int), np.where(rng.random(n) < .1, rng.integers(1, 4, n), 0)
    opened = rng.choice(5, n, p=[.35, .2, .2, .15, .1])
    day = t // DAY
    last_click, last_t = np.zeros(users, int), np.full(users, -10 * DAY)
    hist: dict[int, list[tuple[int, int]]] = {}
    sessions, lines, activity, truth = [], [], [], []
    for i in range(n):
        u = user[i]
        recent = last_click[u] if t[i] - last_t[u] < 2 * DAY else 0
        z = family_logits(status[i:i + 1], outage[i:i + 1], roaming[i:i + 1], opened[i:i + 1],
                          heavy_user[u:u + 1], np.array([kb_fam[recent - 1] if recent else -1]))
        fams = np.array([z[f][0] for f in FAMILIES])
        if day[i] < DAYS - EVAL_DAYS:
            fams[fam_idx["esim"]] = -9.0           # not launched before the evaluation week
        p_f = np.exp(fams - fams.max())
        p_f /= p_f.sum()
        f = rng.choice(len(FAMILIES), p=p_f)
        own = {"plan": SLOTS["plan"][plan[u] - 1], "contract": SLOTS["contract"][contract[u] - 1],
               "handset": SLOTS["handset"][handset[u] - 1],
               "region": SLOTS["region"][roaming[i] - 1] if roaming[i] else SLOTS["region"][rng.integers(3)]}
        cand = kb[kb_fam == f]
        match = (cand.slot_value == own.get(cand.slot.iloc[0], "")).to_numpy()
        true = int(cand.intent_id.iloc[np.flatnonzero(match)[0]] if match.any() and rng.random() < .85
                   else cand.intent_id.iloc[rng.integers(len(cand))])
        # the production policy: family prior + noise, 5 intents shown; a position-biased click
        score = np.log(p_f[kb_fam] + 1e-9) + rng.gumbel(size=len(kb)) * 1.2
        score[kb.launch_day.to_numpy() > day[i]] = -np.inf
        shown = np.argsort(-score)[:5] + 1
        pos = int(np.flatnonzero(shown == true)[0]) if true in shown else -1
        click = true if pos >= 0 and rng.random() < .8 / (1 + pos) ** .7 else -1
        if click < 0 and rng.random() < .05:
            pos = int(rng.integers(5))
            click = int(shown[pos])
        ts = START + pd.Timedelta(seconds=int(t[i]))
        sid = i + 1
        sessions.append({"session_id": sid, "user_id": int(uid[u]), "event_timestamp": ts,
                         "opened_from": int(opened[i] + 1), "shown_intents": [int(x) for x in shown],
                         "clicked_intent": click, "click_position": pos if click > 0 else -1,
                         "split": "eval" if day[i] >= DAYS - EVAL_DAYS else "train"})
        truth.append({"session_id": sid, "true_intent": true, "eval": day[i] >= DAYS - EVAL_DAYS})
        lines.append({"user_id": int(uid[u]), "event_timestamp": ts - pd.Timedelta(minutes=int(rng.integers(1, 60))),
                      "line_status": int(status[i] + 1),
                      "status_since": int((ts - pd.Timedelta(hours=int(rng.integers(2, 24 * 20)))).timestamp()),
                      "outage_nearby": int(outage[i] + 1), "roaming_in": int(roaming[i] + 1),
                      "last_bill": float(np.round(rng.gamma(4, 10) * (1 + .5 * (plan[u] > 2)), 2))})
        if click > 0:
            ct = int(ts.timestamp()) + int(rng.integers(5, 120))
            h = [(c, x) for c, x in hist.get(u, []) if x >= ct - 2 * DAY] + [(click, ct)]
            hist[u] = h[-6:]
            activity.append({"user_id": int(uid[u]), "event_timestamp": pd.Timestamp(ct, unit="s", tz="UTC"),
                             "recent_topics": [c for c, _ in hist[u]], "recent_topic_ts": [x for _, x in hist[u]]})
            last_click[u], last_t[u] = click, t[i]
    s = pd.DataFrame(sessions)
    tr = pd.DataFrame(truth)
    tables = {"kb": kb, "sessions": s, "subscriber_profile": profiles, "line_state": pd.DataFrame(lines),
              "recent_activity": pd.DataFrame(activity),
              "eval_labels": tr[tr["eval"]].drop(columns="eval").reset_index(drop=True)}
    for name, df in tables.items():
        df.to_parquet(out / f"{name}.parquet", index=False)
    shutil.copyfile(HERE / "contract.yaml", out / "contract.yaml")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="artifacts/datasets/telecom")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    path = generate(a.out, a.users, a.seed)
    counts = {p.stem: len(pd.read_parquet(p)) for p in sorted(path.glob("*.parquet"))}
    print(f"wrote {path}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    print(yaml.safe_dump({"next": [f"rgalign data validate {path}", f"rgalign pipeline run --data {path}"]}))
