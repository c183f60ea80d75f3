"""Benchmarks, measured side by side in one run (``make bench``).

Every figure compares a baseline A with emocircuits B in the same process:
one warm-up call of each, then A, B, A, B... (at least ``--repeats`` pairs,
default 5; quick workloads get more pairs, up to ~4 s worth), medians, so
drift in machine load hits both sides alike. Peak memory comes from one
extra untimed call of each side (see ``bench/harness.py``).

1. Capture, all layers of ``resid_post`` through ``emocircuits.capture``
   (nnsight) with pooling ``last_prompt_token``, ``mean_all`` and ``none``
   (per token), against a plain transformers forward
   ``lm.hf(**enc, output_hidden_states=True)`` under ``torch.inference_mode``
   on the same batch. Ratio = plain time / capture time, target >= 0.9.
   A ratio above 1 means capture is faster: it stops after the last block
   and skips the unembedding. A stricter line compares with the decoder
   stack alone (``lm.hf.model``, no unembedding; no target).
2. Capture of ``mlp_act`` and ``attn_z`` at every layer (60 sites on a
   30-layer model) against the same plain forward, target >= 0.8.
3. Steered generation: ``generation.generate`` with an ``Add`` of 4 x a
   random unit vector at ``resid_post`` of the middle layer, positions
   "all", against ``generate`` without interventions; same prompts, greedy,
   fixed ``max_new_tokens``. A steer can make greedy decoding stop at EOS
   earlier, so both sides count the tokens they generate (up to EOS) and the
   ratio is of tokens per second (steered / plain), target >= 0.85.
4. Circuit modulation: ``Add`` at ``mlp_act.L`` and ``attn_z.L`` for 10
   middle layers (20 interventions), positions "last:1", each vector zero
   but for 4 neurons or 2 heads; tokens/s ratio against plain, target >= 0.8.
5. Attribution graph (chapter 05) with 256 feature rows for prompts of 10,
   20, 40 and 80 tokens, beside one plain forward of the same prompt, with
   the largest cached transcoder set of the model (or a small one trained on
   the spot); target: <= 20 s at 40 tokens. Reported as seconds (B), the
   ratio says how many plain forwards one graph costs.
6. Judges: emotion, empathy and coherence on 300 short texts, beside the
   sentence encoder alone on the same texts. The goal is under 30 s per
   1,000 texts on 2 cores; 5 pairs on 1,000 texts would take minutes, so the
   target is scaled to the texts used (time is linear in texts, batches of
   64) and ``per_1000_s`` records the scaled time.
7. Transcoder training (chapter 05): one training step of all layers'
   transcoders (2,048 features, k=32, AuxK on, as in a FULL run) on one
   batch of captured ``mlp_in``/``mlp_out``. A is the textbook dense step
   (the top-k activations scattered into a ``[tokens, features]`` matrix
   and multiplied by the decoder, AuxK likewise), B is
   ``transcoders._Trainer.train_batch``, which decodes the chosen rows only
   (an embedding bag). Same maths (tested to float precision); target
   ratio >= 1.3.
8. Load: cold (GGUF -> float32 safetensors conversion in an empty cache
   folder, once) against warm (from that cache, median of 3); target warm
   <= 3 s. Hub models have no cold GGUF step: warm only.

Every item reports peak memory for both sides and tokens (or texts) per
second; captures also report batch size and tokens per batch. Each item
records ``other_cpu_share``, the CPU other processes used meanwhile, and
warns above 10%: with two intra-op threads on two cores, a busy neighbour
makes torch wait at every parallel region and a 0.8 s forward takes 11 s.
Peak memory is an RSS increase on the CPU, so weights that stay
memory-mapped from safetensors (warm load) count only where touched.

Everything lands in a JSON file (``--out``, default ``_build/bench.json``,
written atomically). ``--quick`` uses fewer prompts and shorter generation
(still 5 pairs). ``--model`` takes any registry name and ``--device`` any torch
device, e.g. ``--model gemma-2-2b-it --device cuda`` on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import OtherLoad, PeakMemory, compare, format_table, judge, system_info, write_json  # noqa: E402

PROMPTS = [
    "I came home and found that my dog had died while I was at work today.",
    "Could you help me write a short note to thank my neighbour for the flowers?",
    "The exam results came out and I passed every subject, even chemistry!",
    "We missed the last train and had to sleep at the station in the cold.",
    "My best friend is moving to another country next month and I feel lost.",
    "Someone scratched my car in the car park and just drove away.",
    "I finally finished the marathon after training for a whole year.",
    "My manager took credit for my project in front of the whole team.",
]

# settings per profile; explicit flags override them
PROFILES = {
    "full": {"batch": 16, "gen_prompts": 8, "max_new_tokens": 32, "judge_texts": 300},
    "quick": {"batch": 8, "gen_prompts": 4, "max_new_tokens": 16, "judge_texts": 100},
}


def make_item(name: str, what: str, measured: dict, ratio: str, target: tuple[str, str, float] | None,
              unit: str = "tok", **extra) -> dict:
    """A result record. ``ratio`` is "time" (A s / B s) or "rate" (B tok/s / A tok/s);
    ``target`` is (quantity, op, bound) with quantity "ratio" or "b_s"."""
    a, b = measured["a"], measured["b"]
    if ratio == "time":
        r = a["s"] / b["s"] if a.get("s") and b.get("s") else None
    else:
        r = b["tok_s"] / a["tok_s"] if a.get("tok_s") and b.get("tok_s") else None
    rec = {"name": name, "what": what, "a": a, "b": b, "repeats": measured.get("repeats"),
           "other_cpu_share": measured.get("other_cpu_share"), "unit": unit,
           "ratio": r, "ratio_def": "A s / B s" if ratio == "time" else f"B {unit}/s / A {unit}/s",
           "target": "-", "met": None, **extra}
    if target is not None:
        qty, op, bound = target
        value = r if qty == "ratio" else b.get("s")
        rec["target"] = f"ratio {op} {bound:g}" if qty == "ratio" else f"B {op} {bound:g} s"
        rec["met"] = judge(value, op, bound)
    return rec


# ---------------------------------------------------------------------------
# workloads


def capture_items(lm, texts: list[str], batch: int, repeats: int) -> list[dict]:
    from emocircuits import capture
    from emocircuits.activations import all_layers

    dev = lm.device
    enc = {k: v.to(dev) for k, v in lm.encode(texts).items()}
    n_tok = int(enc["attention_mask"].sum())

    def forward(module):
        def run() -> int:
            with torch.inference_mode():
                module(**enc, output_hidden_states=True)
            return n_tok
        return run

    def ours(sites: list[str], pooling: str):
        def run() -> int:
            capture(lm, texts, sites, pooling=pooling, batch_size=batch, progress=False)
            return n_tok
        return run

    plain, stack = forward(lm.hf), forward(lm.hf.model)
    resid = all_layers("resid_post", lm.n_layers)
    inner = all_layers("mlp_act", lm.n_layers) + all_layers("attn_z", lm.n_layers)
    cases = [
        ("capture resid_post last_prompt_token", resid, "last_prompt_token", plain, 0.9),
        ("capture resid_post mean_all", resid, "mean_all", plain, 0.9),
        ("capture resid_post none (per token)", resid, "none", plain, 0.9),
        ("  same, vs decoder stack only", resid, "none", stack, None),
        ("capture mlp_act+attn_z last_prompt_token", inner, "last_prompt_token", plain, 0.8),
    ]
    items = []
    for name, sites, pooling, base, bound in cases:
        m = compare(base, ours(sites, pooling), dev, repeats)
        a_label = "lm.hf.model(...) decoder stack" if base is stack else "lm.hf(**enc, output_hidden_states=True)"
        items.append(report(make_item(
            name, f"{len(sites)} sites, pooling={pooling}", m, "time",
            ("ratio", ">=", bound) if bound else None, a_label=a_label, b_label="emocircuits.capture",
            batch=len(texts), tokens_per_batch=n_tok, sites=len(sites), pooling=pooling)))
    return items


def modulation(lm, n_layers: int = 10, n_neurons: int = 4, n_heads: int = 2, value: float = 2.0,
               seed: int = 0) -> list:
    """Circuit-modulation interventions: a few neurons and heads nudged at the last position."""
    from emocircuits.interventions import Add

    g = torch.Generator().manual_seed(seed)
    first = max(0, lm.n_layers // 2 - n_layers // 2)
    ivs = []
    for layer in range(first, min(lm.n_layers, first + n_layers)):
        mlp = torch.zeros(lm.d_mlp)
        mlp[torch.randperm(lm.d_mlp, generator=g)[:n_neurons]] = value
        z = torch.zeros(lm.n_heads, lm.head_dim)
        heads = torch.randperm(lm.n_heads, generator=g)[:n_heads]
        z[heads] = value * torch.nn.functional.normalize(torch.randn(n_heads, lm.head_dim, generator=g), dim=-1)
        ivs += [Add(f"mlp_act.{layer}", mlp, positions="last:1"),
                Add(f"attn_z.{layer}", z.flatten(), positions="last:1")]
    return ivs


def generation_items(lm, prompts: list[str], max_new_tokens: int, repeats: int) -> list[dict]:
    from emocircuits.generation import generate
    from emocircuits.interventions import Add

    def gen(interventions):
        def run() -> int:
            ids = generate(lm, prompts, interventions, max_new_tokens=max_new_tokens,
                           batch_size=len(prompts), return_ids=True)
            return sum(len(r) for r in ids)
        return run

    g = torch.Generator().manual_seed(0)
    unit = torch.nn.functional.normalize(torch.randn(lm.d_model, generator=g), dim=0)
    mid = lm.n_layers // 2
    steer = [Add(f"resid_post.{mid}", unit, alpha=4.0, positions="all")]
    mod = modulation(lm)
    cases = [("generate steered (Add resid_post)", f"Add 4 x unit vector at resid_post.{mid}, positions=all",
              steer, 0.85),
             ("generate circuit modulation", f"{len(mod)} Adds at mlp_act/attn_z of layers "
              f"{mod[0].site.split('.')[1]}-{mod[-1].site.split('.')[1]}, 4 neurons / 2 heads each, "
              f"positions=last:1", mod, 0.8)]
    plain = gen([])
    items = []
    for name, what, ivs, bound in cases:
        m = compare(plain, gen(ivs), lm.device, repeats)
        items.append(report(make_item(
            name, what, m, "rate", ("ratio", ">=", bound), a_label="generate (no interventions)",
            b_label="generate with interventions", batch=len(prompts), max_new_tokens=max_new_tokens,
            greedy=True, interventions=len(ivs))))
    return items


def bench_transcoders(lm):
    """The cached transcoder set of this model that saw the most tokens (chapter 05 trains one), or a
    small set trained now (512 features, k=16, 320 texts, one epoch; about a minute on 2 cores)."""
    import json as _json

    from emocircuits import transcoders as T
    from emocircuits import training
    from emocircuits.cache import cache_dir

    best = None
    for cfg in (cache_dir("transcoders") / lm.name).glob("*/config.json"):
        info = _json.loads(cfg.read_text())
        if len(info["layers"]) == lm.n_layers and (best is None or info["config"]["tokens_seen"] > best[0]):
            best = (info["config"]["tokens_seen"], cfg.parent)
    if best is not None:
        return T.TranscoderSet.load(best[1])
    texts = T.project_corpus(lm)[:320]
    return training.train(lm, texts, training.TrainSettings(n_features=512, k=16, epochs=1), progress=False)


def attribution_items(lm, repeats: int, lengths=(10, 20, 40, 80), max_features: int = 256) -> list[dict]:
    """Attribution graphs (256 feature rows) for prompts of 10-80 tokens, beside one plain forward of the
    same prompt; target: under 20 s at 40 tokens."""
    from emocircuits import attribution as A

    tset = bench_transcoders(lm)
    cfg = next(iter(tset.values())).cfg
    text = " ".join(lm.chat_prompt(p) for p in PROMPTS)
    ids = lm.encode([text])["input_ids"][0]
    items = []
    for n in lengths:
        prompt = lm.tokenizer.decode(ids[:n])
        enc = {k: v.to(lm.device) for k, v in lm.encode([prompt]).items()}
        n_tok = int(enc["input_ids"].shape[1])

        def plain() -> int:
            with torch.inference_mode():
                lm.hf(**enc)
            return n_tok

        def graph() -> int:
            A.attribution_graph(lm, tset, prompt, max_features=max_features)
            return n_tok

        m = compare(plain, graph, lm.device, repeats, min_seconds=0.0, max_repeats=repeats)
        target = ("b_s", "<=", 20.0) if n == 40 else None
        items.append(report(make_item(
            f"attribution graph, {n_tok} tokens", f"{max_features} feature rows + logit, transcoders with "
            f"{cfg.n_features} features, k={cfg.k}, trained on {cfg.tokens_seen:,} tokens", m, "time", target,
            a_label="one plain forward of the prompt", b_label="attribution_graph", prompt_tokens=n_tok)))
    return items


def transcoder_training_item(lm, texts: list[str], repeats: int, n_features: int = 2048, k: int = 32) -> dict:
    """One training step of every layer's transcoder: dense reference (A) against the library's (B)."""
    from emocircuits import training
    from emocircuits import transcoders as T

    # the skip learned with the features and one step per batch, as the dense reference does it: the two sides
    # then compute the same update, and the item times the step's implementation only
    st = training.TrainSettings(n_features=n_features, k=k, seed=0, skip_fit=0.0, step_tokens=0)
    xin, xout, mask, _ = T.mlp_io(lm, texts, list(range(lm.n_layers)), st.max_length)
    keep = T.first_left_out(mask).reshape(-1)
    n_tok = int(keep.sum())
    trainer = training._Trainer(lm, st, "bench", n_batches=1)  # one batch; no learning-rate decay here
    trainer.train_batch(xin, xout, mask)  # sets the scales; then mark a tenth of the features dead, so AuxK runs
    for la in trainer.layers:
        trainer.last_fired[la][: n_features // 10] = -10 * st.dead_after_tokens
    ref = {la: {n: t.detach().clone().requires_grad_(True) for n, t in trainer.params[la].items()}
           for la in trainer.layers}
    ref_opt = {la: torch.optim.Adam(list(p.values()), lr=st.lr) for la, p in ref.items()}
    dead = {la: trainer.last_fired[la] < 0 for la in trainer.layers}

    def dense() -> int:
        for la in trainer.layers:
            x = xin[la].reshape(-1, lm.d_model)[keep].float().cpu() / trainer.scale_in[la]
            y = xout[la].reshape(-1, lm.d_model)[keep].float().cpu() / trainer.scale_out[la]
            p = ref[la]
            pre = x @ p["W_enc"].T + p["b_enc"]
            vals, idx = pre.topk(k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
            y_hat = f @ p["W_dec"] + p["b_dec"] + x @ p["W_skip"].T
            loss = (y_hat - y).pow(2).sum(-1).mean() / (y - y.mean(0)).pow(2).sum(-1).mean()
            fired = torch.zeros(n_features, dtype=torch.bool)
            fired[idx[vals > 0]] = True
            dead_now = dead[la] & ~fired  # as in train_batch: a feature that fires in this batch is not dead
            av, ai = pre.masked_fill(~dead_now, float("-inf")).topk(min(st.aux_k, int(dead_now.sum())), dim=-1)
            fa = torch.zeros_like(pre).scatter(-1, ai, torch.relu(av))
            err = (y - y_hat).detach()
            aux = (fa @ p["W_dec"] - err).pow(2).sum(-1).mean() / err.pow(2).sum(-1).mean().clamp_min(1e-8)
            ref_opt[la].zero_grad()
            (loss + st.aux_coef * aux).backward()
            ref_opt[la].step()
            with torch.no_grad():
                p["W_dec"] /= p["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-8)
        return n_tok

    def ours() -> int:
        for la in trainer.layers:  # the same dead features every call, as on side A
            trainer.last_fired[la].fill_(trainer.tokens)
            trainer.last_fired[la][dead[la]] = -10 * st.dead_after_tokens
        trainer.train_batch(xin, xout, mask)
        return n_tok

    m = compare(dense, ours, lm.device, repeats, min_seconds=0.0, max_repeats=repeats)
    return report(make_item(
        "transcoder training step", f"{lm.n_layers} layers, {n_features} features, k={k}, AuxK on, "
        f"{len(texts)} texts", m, "time", ("ratio", ">=", 1.3), a_label="dense top-k step (scatter + matmul)",
        b_label="_Trainer.train_batch (embedding-bag decoder)", tokens_per_batch=n_tok))


def judges_item(n_texts: int, repeats: int) -> dict:
    """What `emocircuits judge` runs per text: both emotion judges, empathy (the tuning judge's n-grams) and
    coherence, the encoder's one pass serving the reporting emotion judge (goal: at least 200 texts/s)."""
    from emocircuits import judges as J
    from emocircuits.coherence import coherence
    from emocircuits.embeddings import embed

    emo, rep, emp = J.EmotionJudge(use_all=True), J.ReportingEmotionJudge(use_all=True), J.EmpathyJudge(use_all=True)
    texts = emo.corpus_texts
    texts = (texts * (n_texts // len(texts) + 1))[:n_texts]

    def encoder() -> int:
        embed(texts)
        return len(texts)

    def all_four() -> int:
        E = embed(texts)
        emo(texts), rep.predict_proba(texts, E), emp.score(texts), coherence(texts)
        return len(texts)

    m = compare(encoder, all_four, torch.device("cpu"), repeats)
    return report(make_item(
        f"judges, {n_texts} texts", "both emotion judges + empathy + coherence vs the sentence encoder alone", m,
        "time", ("b_s", "<=", n_texts / 200.0), unit="text", a_label="sentence encoder alone",
        b_label="all four judges (as emocircuits judge runs them)", texts=n_texts,
        texts_per_s=n_texts / m["b"]["s"]))


def book_generation_item(executed: Path) -> dict:
    """The default book's generation speed: every token the chapters that ran in the last build generated,
    over the seconds they spent generating (``executed/profile.json``), against that build's reference
    figure: plain transformers ``generate``, one batch of 8 fixed prompts x 32 tokens on one thread, as
    each chapter's kernel has in a two-job build (goal >= 0.8x). Read from the build, not re-timed: the two
    ran in one run of `make book` (chapters reused from an earlier build are left out), but on different
    prompts, batch sizes and lengths, so the ratio says how close the book's generation comes to plain
    batched generation on the same machine, not a side-by-side replay of its prompts."""
    import json

    path = executed / "profile.json"
    name, what = "book generation", "the default book's generated tokens/s vs plain batched generate (same build)"
    try:
        prof = json.loads(path.read_text())
    except (OSError, ValueError):
        print(f"{name}: no {path}; run `make book` first", flush=True)
        return make_item(name, what + f" (no {path} yet)", {"a": {}, "b": {}}, "rate", None)
    chapters = {k: c for k, c in prof.get("chapters", {}).items() if c.get("ran", True)}
    ref = prof.get("reference") or {}
    tokens = sum(c["generated_tokens"] for c in chapters.values())
    seconds = sum(c["seconds"]["generation"] for c in chapters.values())
    measured = {"a": {"tok_s": ref.get("tokens_per_s"), "s": ref.get("seconds")},
                "b": {"tok_s": tokens / seconds if seconds else None, "s": seconds, "tokens": tokens}}
    return report(make_item(name, what, measured, "rate", ("ratio", ">=", 0.8), a_label="plain generate (reference)",
                            b_label="the book's chapters", chapters=sorted(chapters), source=str(path)))


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def load_item(model: str, device: torch.device, warm_repeats: int = 3) -> dict:
    """Cold GGUF load (once, empty cache folder) and warm loads from that cache."""
    from emocircuits import load_model
    from emocircuits.registry import get_spec

    def timed_load() -> tuple[float, float]:
        with PeakMemory(device) as mem:
            t = time.perf_counter()
            lm = load_model(model, device=str(device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t
        del lm
        return dt, mem.peak_mb

    bundled = get_spec(model).source == "bundled"
    with tempfile.TemporaryDirectory() as tmp, _env("EMOCIRCUITS_CACHE", tmp):
        cold = timed_load() if bundled else (None, None)
        warm = [timed_load() for _ in range(warm_repeats)]
    side = lambda t, mb, runs=None: {"s": t, "runs_s": runs, "tokens": None, "tok_s": None,
                                     "peak_mb": None if mb is None else round(mb, 1)}
    warm_s = statistics.median(t for t, _ in warm)
    m = {"a": side(*cold), "b": side(warm_s, max(mb for _, mb in warm), [round(t, 3) for t, _ in warm]),
         "repeats": warm_repeats}
    return report(make_item(
        "load cold (GGUF) vs warm", "cold: GGUF -> safetensors in an empty cache, once; warm: median of "
        f"{warm_repeats}" + ("" if bundled else "; hub model, no cold step"), m, "time", ("b_s", "<=", 3.0),
        unit="", a_label="cold load (GGUF conversion)", b_label="warm load (cached safetensors)"))


def busy_warning(seconds: float = 1.0) -> float | None:
    """Other processes competing for the cores make every time meaningless; say so up front."""
    with OtherLoad() as other:
        time.sleep(seconds)
    if other.share is not None and other.share > 0.1:
        print(f"WARNING: other processes use {other.share:.0%} of the CPU; the times below will be noisy "
              f"(each item records other_cpu_share)", flush=True)
    return other.share


def report(item: dict) -> dict:
    """Print one progress line as soon as an item is measured."""
    ratio = "-" if item["ratio"] is None else f"{item['ratio']:.2f}"
    met = {True: f"{item['target']}: met", False: f"{item['target']}: NOT met", None: "no target"}[item["met"]]
    a, b = item["a"].get("s"), item["b"].get("s")
    fmt = lambda t: "-" if t is None else f"{t:.3f} s"
    other = item.get("other_cpu_share")
    busy = f"; WARNING: other processes used {other:.0%} of the CPU meanwhile" if other and other > 0.1 else ""
    print(f"{item['name'].strip()}: A {fmt(a)}, B {fmt(b)}, ratio {ratio} ({met}){busy}",
          flush=True)
    return item


# ---------------------------------------------------------------------------


GROUPS = ("capture", "generation", "attribution", "transcoders", "judges", "load", "book")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="registry name (default smollm2-135m)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: CUDA when available)")
    p.add_argument("--quick", action="store_true", help="fewer prompts and shorter generation (still >= 5 pairs)")
    p.add_argument("--repeats", type=int, default=5, help="timed A,B pairs per item after the warm-up (>= 5)")
    p.add_argument("--batch", type=int, help="texts per capture batch (16; quick 8)")
    p.add_argument("--gen-prompts", type=int, help="prompts per generation batch (8; quick 4)")
    p.add_argument("--max-new-tokens", type=int, help="generated tokens per prompt (32; quick 16)")
    p.add_argument("--judge-texts", type=int, help="texts for the judges item (300; quick 100)")
    p.add_argument("--skip-judges", action="store_true")
    p.add_argument("--skip-cold", action="store_true", help="skip the load item")
    p.add_argument("--only", nargs="+", choices=GROUPS, help="run only these groups of items (default: all)")
    p.add_argument("--out", default="_build/bench.json", help="JSON results (default _build/bench.json)")
    args = p.parse_args(argv)
    if args.repeats < 5:
        p.error("--repeats must be at least 5")
    for key, value in PROFILES["quick" if args.quick else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 1 <= args.gen_prompts <= len(PROMPTS):
        p.error(f"--gen-prompts must be between 1 and {len(PROMPTS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    from emocircuits import load_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = system_info(device)  # before loading, so the load average is the machine's, not ours
    torch.manual_seed(0)
    lm = load_model(args.model, device=str(device))
    print(f"model {lm.name} ({lm.n_layers} layers, d_model {lm.d_model}, {lm.dtype}) on {device}; "
          f"torch {info['torch']}, {info['torch_threads']} threads, {info['cpu_count']} cores, "
          f"CPU {info['cpu_model']}{', GPU ' + info['gpu'] if 'gpu' in info else ''}", flush=True)
    info["other_cpu_share_start"] = busy_warning()

    texts = [f"{PROMPTS[i % len(PROMPTS)]} (note {i})" for i in range(args.batch)]
    want = set(args.only) if args.only else set(GROUPS)
    items = []
    if "capture" in want:
        items += capture_items(lm, texts, args.batch, args.repeats)
    if "generation" in want:
        items += generation_items(lm, PROMPTS[:args.gen_prompts], args.max_new_tokens, args.repeats)
    if "attribution" in want:
        items += attribution_items(lm, args.repeats)
    if "transcoders" in want:
        items.append(transcoder_training_item(lm, texts, args.repeats))
    del lm
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if "judges" in want and not args.skip_judges:
        items.append(judges_item(args.judge_texts, args.repeats))
    if "load" in want and not args.skip_cold:
        items.append(load_item(args.model, device))
    if "book" in want:
        items.append(book_generation_item(Path(__file__).resolve().parents[1] / "_build" / "executed"))

    wall = time.perf_counter() - t0
    info["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    print()
    print(format_table(items))
    targets = [it for it in items if it["met"] is not None]
    print(f"\n{sum(it['met'] for it in targets)}/{len(targets)} targets met; A = baseline, B = emocircuits; "
          f"medians of >= {args.repeats} alternating pairs after a warm-up; peak MB = peak memory increase "
          f"({info['memory_method']}); wall time {wall:.0f} s")
    print(f"torch {info['torch']}, {info['torch_threads']} threads, CPU {info['cpu_model']}"
          f"{', GPU ' + info['gpu'] if 'gpu' in info else ''}")
    busy = [it["name"].strip() for it in items if (it.get("other_cpu_share") or 0) > 0.1]
    if busy:
        print(f"WARNING: other processes used over 10% of the CPU during: {', '.join(busy)}; rerun on an idle machine")
    out = write_json(args.out, {
        "model": args.model, "profile": "quick" if args.quick else "full", "settings": vars(args),
        "system": info, "wall_s": round(wall, 1), "items": items,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - wall))})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
