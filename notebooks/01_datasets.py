# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
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
# # 01 · Datasets built in the open
#
# **Objectives.** By the end of this chapter you will
# - know the four datasets every later chapter reads, why each is shaped as
#   it is, and where it follows or departs from the paper it comes from;
# - see that the empathy pairs cannot be told apart by length alone, and how
#   much of them a keyword count can tell apart before and after *lexical
#   ablation*;
# - run the models on the emotion prompts and keep every generation with
#   the settings that made it.
#
# All data here was written for this project; the only quoted text is
# paper C's experimental prompts, marked as such. The card for every file is
# `data/README.md`; `emocircuits data validate FILE` checks one.

# %% [markdown]
# ```{include} ../book/_gpu.md
# ```

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # any name from `emocircuits models`
QUICK = False  # True: fewer items, for the test suite
FULL = False  # True: the largest samples (for a GPU; hours on a CPU)
SEED = 0

# %%
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import display
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score

from emocircuits import datasets as ds
from emocircuits import load_model
from emocircuits.records import sizer
from emocircuits.generation import elicit
from emocircuits.judges import EmotionJudge
from emocircuits.lexical import names_emotion
from emocircuits.page import result
from emocircuits.plots import setup_style
from emocircuits.stats import bootstrap_ci
from emocircuits.tables import interval

setup_style()
size = sizer(QUICK, FULL)  # size(quick, book, full): this run's value of a sample size
pd.set_option("display.max_colwidth", 120)

# %% [markdown]
# ## What is here

# %%
counts = ds.validate_all()
pd.DataFrame({"file": [f"data/{k}.jsonl" for k in counts], "records": list(counts.values())})

# %% [markdown]
# ## 1. Scenario x event valence x emotion (paper B's design)
#
# Paper B asks whether a model has a representation of an emotion that does
# not depend on *what happened*. So each record is a neutral everyday
# scenario with three possible next events, one good, one neutral and one
# bad, and the model is instructed to reply in each of six emotions. An
# emotion direction that survives averaging over scenarios and valences
# cannot be a direction for "something bad happened". Scenarios and events
# never name an emotion (the loader rejects them if they do), and the test
# set is written from different scenario skeletons, so results on it are
# not memory of the discovery set.

# %%
disc, test = ds.load_named("sev_discovery"), ds.load_named("sev_test")
ex = disc[0]
pd.DataFrame({"field": ["theme", "scenario", "positive", "neutral", "negative"],
              "text": [ex.theme, ex.scenario, ex.positive, ex.neutral, ex.negative]})

# %%
prompts = ds.sev_prompts(disc)
print(f"{len(disc)} discovery scenarios x 3 valences x {len(ds.EMOTIONS)} emotions = {len(prompts)} prompts")
print("system:", repr(prompts[0]["system"]))
print("user:  ", repr(prompts[0]["user"]))

# %% [markdown]
# If the bad events were systematically longer than the good ones, a
# direction could pick up length. They are not:

# %%
rows = []
for name, recs in [("discovery", disc), ("test", test)]:
    for r in recs:
        for v in ds.VALENCES:
            rows.append({"set": name, "valence": v, "words": len(getattr(r, v).split())})
lengths = pd.DataFrame(rows)
fig, ax = plt.subplots()
sns.boxplot(lengths, x="valence", y="words", hue="set", ax=ax)
ax.set(title="Event length by valence", ylabel="words per event")
plt.show()
lengths.groupby(["set", "valence"])["words"].describe()[["mean", "std", "min", "max"]].round(1)

# %% tags=["remove-input"]
box_mean = lengths.groupby(["set", "valence"])["words"].mean()
box_spread = max(box_mean[name].max() - box_mean[name].min() for name in ("discovery", "test"))
display(result(
    f"{len(disc)} discovery and {len(test)} test scenarios give {len(prompts):,} discovery prompts (3 valences x "
    f"{len(ds.EMOTIONS)} emotions each); the mean event length differs by at most {box_spread:.1f} words between "
    f"valences, on events of {lengths.words.mean():.0f} words on average."))

# %% [markdown]
# ## 2. Empathy in action (paper A's design)
#
# Paper A contrasts two replies to the same game situation: one that trades
# task progress for the distressed person, one that sticks to the task. The
# five games are modelled on the Empathy-in-Action benchmark; each has an
# objective, the empathy pressure, and a 0/1/2 rubric.

# %%
scen = ds.load_named("eia_scenarios")
pd.DataFrame([{"id": s.id, "title": s.title, "objective": s.objective} for s in scen])

# %%
pairs = ds.load_named("eia_pairs")
print(ds.eia_prompt(scen[0]))
p = pairs[0]
print(f"\nempathic: {p.positive}\n\ntask-focused: {p.negative}")

# %% [markdown]
# The split is stored in the file (35 train / 15 test, 3 test pairs per
# game, seed 0), so every chapter evaluates on the same held-out pairs.

# %%
pd.crosstab(pd.Series([r.scenario for r in pairs], name="game"), pd.Series([r.split for r in pairs], name="split"))

# %% [markdown]
# ### Could a probe cheat?
#
# A probe trained on these pairs could succeed for the wrong reason if the
# two sides differ in something shallow. We check two shallow cues with a
# cross-validated logistic regression, grouped by game so that the test
# folds hold games the classifier has not seen. The cues are the reply's
# **length** and its count of **empathy keywords** (the 44-word list that
# lexical ablation replaces, shown at the end). Chance is 50%. With five
# folds a bootstrap interval would be too coarse, so beside the mean we
# give the range over folds.

# %%
def shallow_accuracy(records, feature):
    """``feature`` maps a list of texts to one number per text."""
    X = np.r_[feature([r.positive for r in records]), feature([r.negative for r in records])][:, None]
    y = np.r_[np.ones(len(records)), np.zeros(len(records))]
    groups = np.r_[[r.scenario for r in records], [r.scenario for r in records]]
    scores = cross_val_score(LogisticRegression(), X, y, groups=groups, cv=GroupKFold(5))
    return scores.mean(), scores.min(), scores.max()


ablated, n_repl = ds.lexical_ablation(pairs)
word_counts = lambda texts: np.array([len(t.split()) for t in texts], float)  # noqa: E731
table = []
for cue, fn in [("length (words)", word_counts), ("empathy keywords", ds.keyword_counts)]:
    for label, recs in [("original", pairs), ("after lexical ablation", ablated)]:
        mean, lo, hi = shallow_accuracy(recs, fn)
        table.append({"cue": cue, "pairs": label, "accuracy": round(mean, 3), "fold min": round(lo, 3),
                      "fold max": round(hi, 3)})
print(f"lexical ablation replaced {n_repl['positive']} keywords on the empathic side and "
      f"{n_repl['negative']} on the task side")
pd.DataFrame(table)

# %%
lp = np.array([len(r.positive.split()) for r in pairs])
ln = np.array([len(r.negative.split()) for r in pairs])
diff, lo, hi = bootstrap_ci(lp - ln, seed=SEED)
fig, ax = plt.subplots()
ax.scatter(ln, lp, s=14)
m = max(lp.max(), ln.max()) + 5
ax.plot([0, m], [0, m], "k--", lw=1, label="equal length")
ax.set(xlabel="task-focused reply (words)", ylabel="empathic reply (words)",
       title=f"Pair lengths: empathic - task = {diff:+.1f} words (95% CI {lo:+.1f} to {hi:+.1f})")
ax.legend()
plt.show()

# %% [markdown]
# Length tells the sides apart at about chance. Keywords do better than
# chance but not well (the accuracy above), and lexical ablation removes
# that cue: a keyword count of zero on both sides leaves nothing to learn.
# So in chapter 03 a probe that still separates ablated pairs is reading
# more than vocabulary. What this cannot show: other shallow cues (sentence
# structure, pronouns, the word *task*) remain, and 50 pairs written by one
# author carry that author's style.
#
# Keywords separate the stored pairs only moderately, and ablation finds
# few of them to replace (the empathic replies mostly *act*). For a strong
# test, `eia_lexical.jsonl` puts the keywords where they matter: 20 pairs
# in the same games, never trained on. In `care_words` pairs only the
# empathic reply uses them; in `polite_task` pairs only the task-focused
# reply does, wrapped around a refusal. Chapter 03 scores the probe on
# both.

# %%
lexical = ds.load_named("eia_lexical")
kw = pd.DataFrame({"variant": [r.variant for r in lexical],
                   "empathic side": ds.keyword_counts([r.positive for r in lexical]).astype(int),
                   "task side": ds.keyword_counts([r.negative for r in lexical]).astype(int)})
for variant in ("care_words", "polite_task"):
    r = next(r for r in lexical if r.variant == variant)
    print(f"{variant}\n  empathic: {r.positive}\n  task-focused: {r.negative}\n")
kw.groupby("variant").agg(["count", "sum"])

# %% [markdown]
# Each side of a stored pair is written freely, in its own sentences and
# details. `eia_matched.jsonl` (70 pairs: 30 test and 40 train, 6 and 8 per
# game) holds more fixed. Both sides of a pair open with the same word,
# have nearly the same length, follow one frame and use no keyword. They
# differ in whom the action serves. Chapter 03 uses its test pairs to ask
# whether the probe reads that contrast or something else that comes with
# the stored pairs' sides. It uses its train pairs to fit a probe where
# little else differs.

# %%
matched = ds.load_named("eia_matched")
words = np.array([[len(r.positive.split()), len(r.negative.split())] for r in matched])
r = matched[0]
print(f"empathic: {r.positive}\ntask-focused: {r.negative}\n")
print(f"{len(matched)} pairs ({sum(r.split == 'train' for r in matched)} train); words per side {words.min()}-{words.max()}, largest ratio within a pair "
      f"{(words.max(1) / words.min(1)).max():.2f}; keywords on the empathic / task sides: "
      f"{int(ds.keyword_counts([r.positive for r in matched]).sum())} / "
      f"{int(ds.keyword_counts([r.negative for r in matched]).sum())}")

# %% tags=["remove-input"]
box_len, box_kw = (next(t for t in table if t["cue"] == cue and t["pairs"] == "original")
                   for cue in ("length (words)", "empathy keywords"))
display(result(
    f"Across held-out games, a classifier on reply length tells the sides of the {len(pairs)} stored pairs apart at "
    f"{box_len['accuracy']:.2f} and one on keyword counts at {box_kw['accuracy']:.2f} (chance 0.50); empathic "
    f"minus task-focused length is {interval(diff, lo, hi, 1)} words, and the {len(matched)} matched pairs hold "
    f"length, frame and keywords fixed."))

# %% [markdown]
# ## 3. Paper C's prompts, and held-out situations
#
# Paper C compares five empathetic system prompts with a neutral one on five
# situations. We quote them as the paper gives them, and add situations
# written here for evaluation the circuit was not found on. Note that the
# paper's first "empathetic" prompt is word for word its neutral prompt.

# %%
cp = ds.load_named("circuit_prompts")
held = ds.load_named("situations_heldout")
pd.DataFrame([{"id": r.id, "kind": r.kind, "text": r.text} for r in cp])

# %%
print(f"{len(held)} held-out situations, e.g.:")
for r in held[:5]:
    print(" -", r.text)

# %% tags=["remove-input"]
box_names = {"system_empathetic": "empathetic system prompts", "system_neutral": "neutral system prompt",
             "situation": "situations"}
box_kinds = pd.Series([box_names.get(r.kind, r.kind) for r in cp]).value_counts()
display(result(
    f"Paper C's prompts come as given ({', '.join(f'{n} {k}' for k, n in box_kinds.items())}), and "
    f"{len(held)} situations written here keep its circuit's evaluation off the prompts it was found on."))

# %% [markdown]
# ## 4. Persona pairs (Persona Vectors' design)
#
# Persona Vectors extracts a trait direction from the difference between
# replies under a trait-eliciting and a trait-suppressing system prompt, on
# one half of the questions, and evaluates on the other half. Chapter 06
# builds this direction from the bundled model's own replies and steers
# with it, beside the probe direction.

# %%
persona, questions = ds.load_named("persona_pairs"), ds.load_named("persona_questions")
pd.DataFrame([{"id": r.id, "empathetic": r.positive, "apathetic": r.negative} for r in persona])

# %%
pd.Series([q.split for q in questions]).value_counts()

# %% tags=["remove-input"]
box_split = pd.Series([q.split for q in questions]).value_counts()
box_use = {"extract": "build the direction", "eval": "judge it"}
display(result(
    f"{len(persona)} pairs of warm and cold system prompts and {len(questions)} questions: "
    + " and ".join(f"{n} to {box_use.get(k, k)}" for k, n in box_split.items())
    + ", so the persona direction is judged on questions it was not built from."))

# %% [markdown]
# ## Elicitation
#
# Paper B runs every prompt through the model (greedy, 100 tokens) and keeps
# a reply only when a judge says it expresses the instructed emotion. The
# judge is chapter 02's subject; here we run the model and store every
# generation with its prompt, model, seed and settings, which is what the
# judge and the later chapters read. The judge is chapter 02's emotion
# judge (its held-out accuracy is measured there); a reply is *accepted*
# when the judged emotion is the instructed one. One scenario per theme
# (of eight) in a FULL run, two themes in the default book, one scenario in
# QUICK mode.

# %%
lm = load_model(MODEL)
first = ds.first_per_theme(disc, 1)  # one scenario per theme
chosen = first[: size(1, 2, len(first))]
elicit_prompts = ds.sev_prompts(chosen)
records = elicit(lm, elicit_prompts, max_new_tokens=size(24, 32, 48), seed=SEED, progress=False,
                    judge=EmotionJudge(use_all=True, seed=SEED))
gen = pd.DataFrame([{"emotion": r.emotion, "valence": r.prompt_id.split(":")[1], "reply": r.text,
                     "judged": r.judge["label"], "accepted": r.accepted} for r in records])
print(f"{len(records)} generations from {lm.name}")
gen[gen.valence == "negative"].head(6)

# %% [markdown]
# Paper B's filter: how many replies per instructed emotion the judge
# accepts (with a 95% bootstrap interval over replies), beside the 1/7
# a judge guessing at random among its seven labels would accept. With
# few replies per emotion the intervals are wide.

# %%
acc_rows = []
for emo_name, grp in gen.groupby("emotion"):
    vals = grp.accepted.astype(float).to_numpy()
    est, lo, hi = bootstrap_ci(vals, seed=SEED) if len(vals) > 1 else (vals.mean(), np.nan, np.nan)
    acc_rows.append({"emotion": emo_name, "replies": len(vals), "accepted": f"{est:.2f} [{lo:.2f}, {hi:.2f}]",
                     "most often judged as": grp.judged.mode().iat[0]})
acc_rows.append({"emotion": "random judge", "replies": "-", "accepted": f"{1 / 7:.2f}", "most often judged as": "-"})
pd.DataFrame(acc_rows)

# %% [markdown]
# A judge-free look at the same replies: the share that repeat the emotion
# word itself, and the mean reply length, per instructed emotion.

# %%
gen["names its emotion"] = names_emotion(gen.reply, gen.emotion)
gen["words"] = gen.reply.str.split().str.len()
gen.groupby("emotion")[["names its emotion", "words"]].mean().round(2)

# %% [markdown]
# ## Summary
#
# - `ds.load_named(name)` reads and validates any of the files above; bad
#   records fail with the file, line and field.
# - `ds.sev_prompts` builds paper B's 2,880 discovery prompts by code.
# - EIA pairs carry a stored 35/15 split, and `ds.lexical_ablation` removes
#   the keyword cue from both sides. `eia_lexical.jsonl` (20 pairs) is
#   where that cue is strong, used as a stress test in chapter 03.
#   `eia_matched.jsonl` (30 test and 40 train pairs) holds register fixed
#   for the same chapter.
# - `generation.elicit` keeps generations with everything needed to redo them.
#
# The lexical-ablation keyword list, with the neutral word each becomes:

# %%
pd.DataFrame(sorted(ds.EMPATHY_KEYWORDS.items()), columns=["keyword", "replacement"]).T

# %% [markdown]
# ### References
#
# - Paper B: *Do LLMs "Feel"? Emotion Circuits Discovery and Control*, [arXiv:2510.11328](https://arxiv.org/abs/2510.11328): the scenario x event-valence x emotion design of the SEV prompts.
# - Paper A: *Detecting and Steering LLMs' Empathy in Action*, [arXiv:2511.16699](https://arxiv.org/abs/2511.16699): the Empathy-in-Action games, their prompt and the 0/1/2 rubric, and the keyword metric.
# - Paper C: *Preliminary Investigation of Empathy Regulating Circuits in Language Models* (preprint): the empathetic and neutral system prompts.
# - Chen et al., *Persona Vectors: Monitoring and Controlling Character Traits in Language Models*, [arXiv:2507.21509](https://arxiv.org/abs/2507.21509): the persona pairs and questions.
# - `data/README.md` in the repository: who wrote each file, how, and to which brief.
