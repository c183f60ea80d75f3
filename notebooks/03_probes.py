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
# # 03 · Probes: finding emotion and empathy in activations
#
# **Objectives.** By the end of this chapter you will
# - fit paper A's mean-difference empathy probe at every layer and read
#   its held-out AUROC against random directions and shuffled labels;
# - see how much the choice of *pooling* matters, and why averaging over
#   the prompt (paper A's `mean_all`) measures something looser than
#   averaging over the reply;
# - check that the probe survives lexical ablation, i.e. that it is not a
#   detector of the words "sorry" and "understand";
# - find paper B's emotion directions, see where emotions separate and
#   whether their geometry matches intuition;
# - answer paper A's open question about cross-model agreement, and relate
#   the probe to the judged empathy of real generations.
#
# A probe shows that information is *linearly readable* at a layer. It does
# not show that the model *uses* that direction; chapters 04-06 test that
# by intervening.

# %% [markdown]
# ```{include} ../book/_gpu.md
# ```

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # any name from `emocircuits models`
QUICK = False  # True: fewer items, for the test suite
FULL = False  # True: the largest samples (for a GPU; hours on a CPU)
SEED = 0
# True: MODEL runs on NDIF, nnsight's remote service, for a hub model it hosts (the key from the environment
# variable NDIF_API_KEY, never from a cell); this chapter's probes need traces only
REMOTE = False

# %%
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import display
from scipy.stats import pearsonr
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import silhouette_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from emocircuits import corpora
from emocircuits import datasets as ds
from emocircuits import emotion_acts
from emocircuits import judges as J
from emocircuits import load_model
from emocircuits import probes as P
from emocircuits import readout
from emocircuits.activations import capture
from emocircuits.records import record, sizer
from emocircuits.generation import elicit
from emocircuits.page import result
from emocircuits.plots import band, setup_style
from emocircuits.stats import bootstrap_ci, correlation_ci
from emocircuits.tables import interval, show as show_table  # `show` names a list of layers below

setup_style()
size = sizer(QUICK, FULL)  # size(quick, book, full): this run's value of a sample size
pd.set_option("display.max_colwidth", 100)
OTHER = "gemma3-270m" if MODEL != "gemma3-270m" else "smollm2-135m"

lm = load_model(MODEL, remote=REMOTE)
LAYERS = list(range(0, lm.n_layers, size(6, 2, 1)))
pairs = ds.load_named("eia_pairs")
pairs = pairs[:: size(2, 1, 1)]  # QUICK: every other pair (the stored split is kept for the rest)
scen = {s.id: s for s in ds.load_named("eia_scenarios")}
print(lm, f"\n{len(pairs)} pairs, {sum(p.split == 'train' for p in pairs)} train / "
      f"{sum(p.split == 'test' for p in pairs)} test (stored split)")

# %% [markdown]
# ## 1. An empathy probe at every layer, three ways of pooling
#
# Each pair is an EIA game prompt followed by two replies, one empathic and
# one task-focused (chapter 01). The probe is the normalised difference of
# the two sides' mean activations on the 35 training pairs. It is scored by
# AUROC on the 15 test pairs, with a bootstrap interval over pairs. Three
# poolings turn a text's token activations into one vector:
#
# - `mean_all` (paper A): average over every token, prompt included;
# - `last_prompt_token` (paper B's choice for prompts): the final token,
#   here the reply's last token;
# - `mean_response`: average over the reply's tokens only.
#
# The grey line is the 95th percentile of 100 random unit directions,
# each oriented on the training pairs as a probe would be.
#
# **The layer is chosen before any test pair is read.** For each layer, a
# direction fitted on four games' training pairs scores the fifth game's.
# The layer with the best mean of those five AUROCs is the probe's
# (`layer_rule` in the probe's metrics). Its test AUROC is the headline.
# The layer where test AUROC peaks is shown beside it, labelled as what it
# is: a choice made by looking, optimistic by construction.

# %%
fits = P.fit_pair_probes(lm, pairs, scen, layers=LAYERS, poolings=("mean_all", "last_prompt_token", "mean_response"),
                        seed=SEED)  # one forward pass, three poolings
fig, ax = plt.subplots(figsize=(8, 3.8))
for pool, fit in fits.items():
    band(ax, LAYERS, [fit.at(l).auroc for l in LAYERS], [fit.at(l).auroc_ci[0] for l in LAYERS],
         [fit.at(l).auroc_ci[1] for l in LAYERS], label=pool)
for pool, fit in fits.items():
    ax.scatter([fit.best_layer], [fit.metrics["random_baseline"]["p95"]], marker="_", s=300, color="grey")
ax.axhline(0.5, color="black", lw=0.6, ls=":")
ax.set(xlabel="layer (resid_post)", ylabel="test AUROC", ylim=(0.3, 1.02),
       title=f"Empathy probe on {MODEL}: held-out AUROC (95% CI); grey: random p95 at the chosen layer")
ax.legend(loc="lower right")
plt.show()

rows = []
for pool, fit in fits.items():
    b = fit.at(fit.best_layer)
    rb, ru, pcb = (fit.metrics[k] for k in ("random_baseline", "random_baseline_unoriented", "pc_baseline"))
    peak = fit.metrics["test_best_layer"]
    rows.append({"pooling": pool, "layer (chosen on train pairs)": fit.best_layer,
                 "AUROC [95% CI]": interval(b.auroc, *b.auroc_ci),
                 "test-peak layer (exploratory): AUROC": f"{peak}: {fit.at(peak).auroc:.2f}",
                 "accuracy [95% CI]": interval(b.accuracy, *b.accuracy_ci),
                 "Cohen's d [95% CI]": interval(b.cohens_d, *b.cohens_d_ci, digits=1),
                 "random dirs, oriented: mean / p95": f"{rb['mean']:.2f} / {rb['p95']:.2f}",
                 "random dirs, oriented: d mean / p95": f"{rb['d_mean']:.1f} / {rb['d_p95']:.1f}",
                 "random dirs, unsigned (paper A): mean / p95": f"{ru['mean']:.2f} / {ru['p95']:.2f}",
                 "1st principal component, no labels: AUROC (variance share)":
                     f"{pcb['auroc'][0]:.2f} ({pcb['explained_variance'][0]:.2f})"})
display(show_table(pd.DataFrame(rows), columns=[
    "pooling", "layer (chosen on train pairs)", "AUROC [95% CI]", "accuracy [95% CI]", "Cohen's d [95% CI]",
    "test-peak layer (exploratory): AUROC"], caption="The probe at its chosen layer, on the test pairs"))
show_table(pd.DataFrame(rows), columns={
    "pooling": "pooling", "random dirs, oriented: mean / p95": "random dirs, oriented: AUROC mean / p95",
    "random dirs, oriented: d mean / p95": "random dirs, oriented: Cohen's d mean / p95",
    "random dirs, unsigned (paper A): mean / p95": "random dirs, unsigned (paper A): AUROC mean / p95",
    "1st principal component, no labels: AUROC (variance share)":
        "1st principal component, no labels: AUROC (variance share)"},
    caption="Baselines at the same layer, on the same test pairs")

# %% [markdown]
# `mean_all` averages the prompt, which both sides share, into each vector.
# So the reply's signal is diluted by a long identical prefix, and the
# probe partly learns how the reply *changes the average*. Averaging over
# the reply alone gives the highest AUROC and Cohen's d on the default
# model, though not the largest margin over the random directions (below).
# The rest of the book uses `mean_response` for replies and
# `last_prompt_token` for prompts.
#
# Note also that random directions are not at 0.5: oriented on the training
# data, a random direction picks up whatever the two sides differ in along
# it. That is why the baseline is shown, not assumed. Paper A scored its
# random directions unsigned (its 95th percentile: 0.857). The second
# table's unsigned column does the same with the same draws, for a
# like-for-like comparison. Unsigned directions centre on 0.5 by
# construction, so the oriented baseline is the stricter of the two.
#
# Why do random directions do so well? Its last column looks for one
# dominant axis: the first principal component of the training replies'
# vectors, found without their labels and only oriented by them. Where it
# separates the test pairs nearly as well as the probe, empathic versus
# task is the largest thing that varies across these replies (they share
# their prompts, so little else does). In that case a random direction
# separates them to the extent that it leans on that axis. In the book run
# it does not. At the chosen layers the first component stays near chance
# (0.59 for `mean_response` at layer 24), yet there random directions' 95th
# percentile reaches 0.76 (unsigned) and 0.82 (oriented). The contrast is
# spread over several axes of variation, and a random direction picks up
# part of it along any of them. Either way a high random baseline is a
# property of the data, not a flaw of the probe. It means that detecting
# this contrast is easy. The probe's margin over the random directions, not
# its AUROC, is the evidence that it found the contrast's own direction.
#
# When both the probe and the random directions separate nearly every test
# pair, AUROC (which stops at 1) hides the gap between them; Cohen's d does
# not. The `d` columns (the probe's in the first table, the random
# directions' in the second) compare the two on the same test pairs. They
# show how much farther apart the probe puts the two sides than a direction
# that knows nothing but the training sign.
#
# A second baseline: the same probe trained after swapping the two sides
# of each training pair at random.

# %%
POOL = "mean_response"
best = fits[POOL].best_layer
pos_t, neg_t, starts = P.pair_texts(lm, pairs, scen)
site = f"resid_post.{best}"
X = capture(lm, pos_t + neg_t, [site], pooling=POOL, response_starts=starts + starts, progress=False,
            cache="memory")[site]  # read when the probes were fitted: kept, not run again
X = X.double().numpy()
n = len(pairs)
tr = np.array([p.split == "train" for p in pairs])
Xp, Xn = X[:n], X[n:]
shuf = readout.shuffled_baseline(Xp[tr], Xn[tr], Xp[~tr], Xn[~tr], n=100, seed=SEED)
logit = readout.logistic_direction(Xp[tr], Xn[tr], seed=SEED)
det_logit = readout.evaluate_direction(logit, Xp[~tr], Xn[~tr], threshold=readout.midpoint(logit, Xp[tr], Xn[tr]),
                                      seed=SEED)
print(f"layer {best}, {POOL}: mean-difference AUROC "
      f"{interval(fits[POOL].metrics['layers'][str(best)]['auroc'], *fits[POOL].metrics['layers'][str(best)]['auroc_ci'])}")
print(f"logistic-regression probe AUROC {interval(det_logit.auroc, *det_logit.auroc_ci)}")
print(f"shuffled-label probes: mean {shuf['mean']:.2f}, 95th percentile {shuf['p95']:.2f}")
print(f"share of shuffled probes at or above the real one: "
      f"{np.mean(np.array(shuf['aurocs']) >= fits[POOL].metrics['layers'][str(best)]['auroc']):.2f}")

# %% [markdown]
# The shuffled-label baseline can have a high 95th percentile even though
# its mean is 0.5. When the two sides differ along one dominant axis, any
# random relabelling of the training pairs still yields a direction close
# to that axis, pointing either way. Its test AUROC then lands near 0 or
# near 1. The share of shuffled probes that reach the real probe's AUROC is
# the permutation p-value. The random-direction baseline (which knows
# nothing of the data) is the stricter comparison for "is there a direction
# at all".

# %% [markdown]
# ### Does the probe read whom the reply serves, or how it is written?
#
# The high random baseline says that the stored pairs' two sides differ
# along many directions at once. Each side of a stored pair is written
# freely, in its own sentences and details, so a direction can separate
# them by anything that goes with the contrast. `eia_matched.jsonl` (its 30
# test pairs, 6 per game; chapter 01) holds more of that fixed. Both sides
# of a pair open with the same word, have nearly the same length (17 to 25
# words), follow one frame in the same plain register and use no care word.
# One spends its action on the person, the other on the task:
#
# > *I set the crate down, open a bottle and hand it to Jonah, then wait
# > in the shade while he drinks it slowly.*
# > *I set the crate down, check that every bottle is still sealed, then
# > lift it again and walk on toward the station.*
#
# The probe trained above scores them at every layer. Beside it, the same
# random-directions protocol: 100 directions, each oriented on the
# training pairs, then scored on the matched pairs. Two readings per
# layer: AUROC over all 60 replies, and the share of pairs whose
# empathic side projects above its own task side (a matched design's
# natural test, with a Wilson interval). The set was written after the
# stored test split's results were known, and after a pilot of ten
# similar pairs; all 30 are shown.

# %%
matched_all = ds.load_named("eia_matched")
matched = [r for r in matched_all if r.split == "test"]  # the 30 test pairs; the 40 train pairs are for below
transfer = P.transfer_pairs(lm, fits[POOL], matched, scen, layers=LAYERS, seed=SEED)
mt = pd.DataFrame([{"layer": l, "stored": fits[POOL].at(l).auroc,
                    "matched": r["detection"].auroc, "lo": r["detection"].auroc_ci[0],
                    "hi": r["detection"].auroc_ci[1], "random_mean": r["random"]["mean"],
                    "random_p95": r["random"]["p95"]} for l, r in transfer.items()])
fig, ax = plt.subplots(figsize=(8, 3.6))
ax.plot(mt.layer, mt.stored, color="C0", label="stored test pairs")
band(ax, mt.layer, mt.matched, mt.lo, mt.hi, label="matched pairs", color="C3")
ax.plot(mt.layer, mt.random_p95, color="grey", ls="--", label="random directions on matched pairs: p95")
ax.plot(mt.layer, mt.random_mean, color="grey", ls=":", label="random directions on matched pairs: mean")
ax.axvline(best, color="k", ls=":", lw=1)
ax.set(xlabel="layer (resid_post)", ylabel="AUROC", ylim=(0.3, 1.02),
       title=f"The {POOL} probe on register-matched pairs (dotted line: best layer on the stored pairs)")
ax.legend(loc="lower right", fontsize=8)
plt.show()
peak = int(mt.loc[mt.matched.idxmax(), "layer"])  # chosen on the matched pairs themselves: optimistic


# a bag-of-words baseline: the same probe fitted on the reply's input embeddings (before any block)
bow = P.fit_pair_probe(lm, pairs, scen, layers=[0], pooling=POOL, site_kind="resid_pre", seed=SEED)
bow_stored = bow.at(0).auroc
bow_matched = P.transfer_pairs(lm, bow, matched, scen, seed=SEED)[0]


def transfer_row(what, l, r):
    det, rb = r["detection"], r["random"]
    return {"layer": f"{l} ({what})", "AUROC [95% CI]": interval(det.auroc, *det.auroc_ci),
            "pairs the right way round [95% CI]": interval(r["paired"], *r["paired_ci"]),
            "random dirs: AUROC mean / p95": f"{rb['mean']:.2f} / {rb['p95']:.2f}",
            "random dirs: pairs right way round, p95": f"{rb['paired_p95']:.2f}",
            "Cohen's d (random p95)": f"{det.cohens_d:.1f} ({rb['d_p95']:.1f})"}


print(f"bag of words (resid_pre.0): AUROC {bow_stored:.2f} on the stored test pairs")
show_table(pd.DataFrame([transfer_row("best on the stored pairs", best, transfer[best]),
                         transfer_row("peak on the matched pairs", peak, transfer[peak]),
                         transfer_row("bag of words: input embeddings, resid_pre", 0, bow_matched)]))

# %% [markdown]
# The first row is the fair test: its layer was fixed before the matched
# pairs were scored. The second row picks the layer on the matched pairs
# themselves, so it is optimistic, but with every layer drawn on the
# picture the reader can see how much. The third is a lexical baseline: the
# same probe fitted on the reply's input embeddings, before any block has
# run. So its pooled vector is the average of the reply's token embeddings,
# a bag of words.
#
# In the book run on the default model (every other layer), the fixed row
# holds. The layer chosen on the stored pairs' training split (layer 24)
# scores 0.92 [0.87, 0.97] on the matched pairs, against a 95th percentile
# of 0.72 for random directions. It puts every pair the right way round
# (random directions: 80% at their 95th percentile). The peak row, picked
# on the matched pairs themselves, adds 0.01 (layer 28). From layer 10 on,
# every layer's AUROC on matched pairs (0.86 to 0.93) stays well above the
# random directions' percentile (0.70 to 0.76). So the matched contrast (or
# the words that come with it; see below) is linearly readable in this
# model's middle and late layers.
#
# How the layer is chosen matters. An earlier version of this chapter took
# the layer with the best AUROC on the stored *test* pairs: layer 4. It
# carries over poorly, 0.71 on the matched pairs, barely above the random
# directions' 0.68 at that layer. It also puts fewer pairs the right way
# round (70%) than the best random directions (77%). The stored test split,
# 15 pairs, rewarded a layer that reads something the matched pairs hold
# fixed, or that does not carry over to replies this short (about 20 words
# against the stored replies' 50). Choosing on the training pairs by
# leaving one game out avoided that trap here; the picture shows every
# layer, so the reader can check the choice. Section 4 repeats the check at
# the second model's chosen layer.
#
# The bag of words is the strongest baseline in this chapter. On the stored
# test pairs (the line above the table) it comes within 0.04 of the probe
# on the default model (0.95 against 0.98). Telling these replies apart
# needs little more than their words. The 44-word lexical ablation of
# section 2 could not show that, since it removes only care words. The bag
# of words separates the matched pairs too, well above random directions. A
# reply that serves the person uses words for giving and staying ("give",
# "sit", "stay", "help", "until") and refers to the person as "him" or
# "her". One that serves the task uses words for checking and moving on
# ("keep", "check", "code", "every"). The fixed and peak rows beat the bag
# of words (0.88 [0.81, 0.94]) by 0.04 and 0.05, with overlapping
# intervals. This test cannot separate reading whom the action serves from
# reading the words that go with serving someone; no set of natural
# sentences can remove that.
#
# Random directions still score above 0.5 on matched pairs. The likely
# reason: oriented on the stored training pairs, they carry some of what
# separates those pairs' sides, and the matched pairs' sides still differ
# in some of it (the pronouns, for one). Their mean near 0.58 is the floor
# to read the probe against, not chance.

# %% [markdown]
# ### A probe trained on matched pairs
#
# The stored pairs' random baseline is high because their sides differ in
# more than the contrast. A probe that is meant to read the contrast can be
# trained where less else differs. `eia_matched.jsonl` also holds 40
# training pairs (8 per game), written to the same constraints as its test
# pairs. They were written after the results above were known and before
# any probe had been trained on them; none was dropped or edited. Like the
# test pairs, most of their task sides name the person too ("I tell Mara I
# am going to the keypad"). But their empathic sides use a third-person
# pronoun (he, she, him, her, his, hers) about five times as often. The
# same protocol as for the stored pairs follows: mean-difference directions
# fitted on the 40 training pairs, and the best layer by AUROC on the 30
# test pairs. Beside them come 100 random directions oriented on the
# training pairs, and the bag of words fitted on the same pairs. Two more
# checks answer the obvious objections. A layer chosen on the test pairs is
# optimistic, so a second layer is chosen without them. It is chosen by
# leaving one game out of the training pairs, fitting on the other four,
# scoring the fifth, and averaging (dashed curve). And the pronouns are
# counted, with no model at all, as one more baseline.

# %%
fit_set = matched_all[:: size(2, 1, 1)]  # QUICK: every other pair of each split (15 test, 20 train)
m_test = [r for r in fit_set if r.split == "test"]
fit_m = P.fit_pair_probe(lm, fit_set, scen, layers=LAYERS, pooling=POOL, seed=SEED)
bow_m = P.fit_pair_probe(lm, fit_set, scen, layers=[0], pooling=POOL, site_kind="resid_pre", seed=SEED)
cv_m = P.cv_layer_auroc(lm, fit_set, scen, layers=LAYERS, pooling=POOL)  # reads the train pairs only
# the test-peak layer (exploratory) and the layer chosen on the train pairs alone (the probe's own, best_layer)
best_m, cv_best = fit_m.metrics["test_best_layer"], P.best_layer(cv_m)
m_tr = P.transfer_pairs(lm, fit_m, m_test, scen, layers=sorted({best_m, cv_best}), seed=SEED)
bow_m_tr = P.transfer_pairs(lm, bow_m, m_test, scen, seed=SEED)[0]
on_stored = P.evaluate_pairs(lm, fit_m, [p for p in pairs if p.split == "test"], scen, layers=[best_m])[best_m]


def pronouns(text):
    return len(re.findall(r"\b(he|she|him|her|his|hers)\b", text, flags=re.IGNORECASE))


pron_auc = readout.auroc_ci([pronouns(r.positive) for r in m_test], [pronouns(r.negative) for r in m_test], seed=SEED)
fig, ax = plt.subplots(figsize=(8, 3.6))
band(ax, LAYERS, [fit_m.at(l).auroc for l in LAYERS], [fit_m.at(l).auroc_ci[0] for l in LAYERS],
     [fit_m.at(l).auroc_ci[1] for l in LAYERS], label="trained on matched pairs: test pairs", color="C2")
ax.plot(LAYERS, [cv_m[l] for l in LAYERS], color="C2", ls="--", label="same, leave one game out (train pairs)")
ax.plot(mt.layer, mt.matched, color="C3", label="trained on the stored pairs: test pairs")
ax.axhline(m_tr[best_m]["random"]["p95"], color="grey", ls="--", label=f"random directions at layer {best_m}: p95")
ax.axhline(bow_m_tr["detection"].auroc, color="C1", ls=":", label="bag of words")
ax.axhline(pron_auc[0], color="C4", ls=":", label="pronoun count")
ax.set(xlabel="layer (resid_post)", ylabel="AUROC", ylim=(0.3, 1.02),
       title=f"{POOL} probes on the {len(m_test)} matched test pairs")
ax.legend(loc="lower right", fontsize=8)
plt.show()
print(f"pronoun count (no model): AUROC {interval(*pron_auc)}; the probe trained on matched pairs, layer {best_m}, on "
      f"the stored test pairs: AUROC {interval(on_stored.auroc, *on_stored.auroc_ci)}")
show_table(pd.DataFrame([
    transfer_row("trained on matched pairs; best on the test pairs", best_m, m_tr[best_m]),
    transfer_row("trained on matched pairs; chosen on the train pairs alone", cv_best, m_tr[cv_best]),
    transfer_row("trained on the stored pairs", best_m, transfer[best_m]),
    transfer_row("bag of words trained on matched pairs", 0, bow_m_tr)]))

# %% [markdown]
# In the book run on the default model, the probe trained on matched pairs
# reaches 0.96 [0.92, 0.99] at layer 24, against a 95th percentile of 0.72
# for random directions (Cohen's d 2.2 against 0.8). Trained on the stored
# pairs, the same pooling reached 0.98 on their test pairs, but with random
# directions at 0.82. On the matched test pairs random directions sit far
# lower whichever pairs orient them: 0.68 at layer 4 and 0.72 at layer 24
# oriented on the stored pairs, 0.72 on the matched train pairs. It is the
# matched test pairs, not the training pairs, that pull them down. The
# layer chosen without the test pairs is layer 26, which scores 0.95 [0.91,
# 0.99] on them (random p95 0.73). The choice costs little, as the picture
# shows, since from layer 10 on every layer scores about 0.92 to 0.96.
# Every probe in the table, the bag of words included, puts nearly every
# pair the right way round. But so do most random directions (80% at their
# 95th percentile): pair order is a weak test here. What separates the
# probes is how well their scores rank all 60 replies together, across
# pairs. Section 4 repeats the test on the second model (gemma3-270m: 0.98
# at layer 10, random p95 0.76; the layer chosen on the train pairs alone
# is the same one). Before writing this section I ran the same fit on every
# layer of both models, as a pilot (`emocircuits probe --model M --pairs
# data/eia_matched.jsonl --pooling mean_response` reruns it). It showed
# that section 4's coarser grid (every fourth layer) would have missed
# gemma3-270m's best layers and peaked at 0.94. So section 4 fits this
# probe on every other layer, as here.
#
# The baselines temper it. The bag of words, fitted on the same 40 pairs,
# scores 0.93, within 0.03 of the probe with overlapping intervals (on
# gemma3-270m it is 0.06 behind). Counting pronouns, with no model and no
# training, scores 0.85 [0.74, 0.93]. The sides still differ in how often
# they refer to the person, and a direction may use that too. The probe
# trained on the stored pairs already scores 0.92 on these test pairs at
# layer 24 and 0.93 at its peak (layer 28). Training on matched pairs adds
# about 0.03 over that peak. The layer chosen without the test pairs is a
# late one (26), as the stored pairs' own choice (24) is. Trained on
# matched pairs, the direction also ranks the freely written stored test
# pairs (0.97, the line above the table), so what it learned carries over
# to them. None of this settles words against intent, and the set is
# narrow: train and test pairs come from the same five games and one
# writer, and were written after results were known.

# %% tags=["remove-input"]
box_stored, box_matched, box_bow = fits[POOL].at(best), transfer[best]["detection"], bow_matched["detection"]
box_apart = round(box_matched.auroc_ci[0], 2) > round(box_bow.auroc_ci[1], 2)
display(result(
    f"At layer {best}, chosen on the training pairs, the probe scores AUROC "
    f"{interval(box_stored.auroc, *box_stored.auroc_ci)} on the stored test pairs (random directions' 95th "
    f"percentile: {fits[POOL].metrics['random_baseline']['p95']:.2f}) and "
    f"{interval(box_matched.auroc, *box_matched.auroc_ci)} on register-matched pairs (random: "
    f"{transfer[best]['random']['p95']:.2f}), against a bag of words' {interval(box_bow.auroc, *box_bow.auroc_ci)}"
    + ("." if box_apart else ", with overlapping intervals.")))

# %% [markdown]
# ## 2. Lexical ablation
#
# If the probe only detected words like "sorry", replacing them would
# break it. `ds.lexical_ablation` replaces 44 empathy keywords by neutral
# words on *both* sides of each test pair; the probe trained on the
# original training pairs is then scored on the ablated test pairs.

# %%
test_pairs = [p for p in pairs if p.split == "test"]
ablated, counts = ds.lexical_ablation(test_pairs)
print(f"replacements: {counts['positive']} on the empathic side, {counts['negative']} on the task side")
CHECK_LAYERS = size([best], LAYERS, LAYERS)  # QUICK: the best layer only (the forward pass stops there)
on_ablated = P.evaluate_pairs(lm, fits[POOL], ablated, scen, layers=CHECK_LAYERS, seed=SEED)
abl = pd.DataFrame([{"layer": l, "original": fits[POOL].at(l).auroc, "ablated": det.auroc,
                     "ablated_lo": det.auroc_ci[0], "ablated_hi": det.auroc_ci[1]} for l, det in on_ablated.items()])
fig, ax = plt.subplots()
ax.plot(abl.layer, abl.original, label="original test pairs")
band(ax, abl.layer, abl.ablated, abl.ablated_lo, abl.ablated_hi, label="lexically ablated (both sides)")
ax.set(xlabel="layer", ylabel="test AUROC", ylim=(0.3, 1.02), title="Does the probe survive lexical ablation?")
ax.legend(loc="lower right")
plt.show()
abl_best = abl.set_index("layer").loc[best]
print(f"best layer {best}: AUROC {abl_best.original:.3f} -> {abl_best.ablated:.3f} "
      f"[{abl_best.ablated_lo:.2f}, {abl_best.ablated_hi:.2f}] (drop {abl_best.original - abl_best.ablated:+.3f})")

# %% [markdown]
# That is a weak test on these pairs: they show empathy through actions
# ("I hand Jonah two bottles and sit with him"), so the ablation finds few
# keywords to replace. `eia_lexical.jsonl` was written to make it strong,
# with 20 pairs in the same five games, never used for training:
#
# - **care words** (10 pairs): the empathic reply is full of the lexicon's
#   words ("I'm so sorry... I understand... you are not alone"), the
#   task-focused reply has none. Ablation removes them all.
# - **polite task** (10 pairs): the reverse. The empathic reply only acts
#   ("I kneel by Priya, wrap her ankle"), the task-focused reply wraps its
#   refusal in care words ("I'm so sorry you're hurt... but my score drops
#   every minute").
#
# The baseline is a detector that counts keywords. By construction it is
# perfect on the first set and perfectly wrong on the second. A probe that
# had learned the words would behave the same way; one that reads what the
# reply *does* would not.

# %%
lexical = ds.load_named("eia_lexical")
stress_rows, per_layer = [], []
for variant in ("care_words", "polite_task"):
    recs = [r for r in lexical if r.variant == variant]
    abl_recs, n_rep = ds.lexical_ablation(recs)
    kw = ds.keyword_counts([r.positive for r in recs]), ds.keyword_counts([r.negative for r in recs])
    keyword = readout.evaluate_direction([1.0], kw[0][:, None], kw[1][:, None], seed=SEED)  # the count is the score
    for name, rs in (("original", recs), ("ablated", abl_recs)):
        dets = P.evaluate_pairs(lm, fits[POOL], rs, scen, layers=CHECK_LAYERS, seed=SEED)
        per_layer += [{"pairs": variant, "texts": name, "layer": l, "auroc": d.auroc} for l, d in dets.items()]
        det = dets[best]
        stress_rows.append({"pairs": variant, "texts": name, "probe AUROC": det.auroc, "lo": det.auroc_ci[0],
                            "hi": det.auroc_ci[1], "keyword counter AUROC": keyword.auroc if name == "original" else
                            float("nan"), "words replaced": n_rep["positive"] + n_rep["negative"]})
stress = pd.DataFrame(stress_rows)
stress_at = stress.set_index(["pairs", "texts"])
fig, ax = plt.subplots(figsize=(8, 3.4))
sns.lineplot(pd.DataFrame(per_layer), x="layer", y="auroc", hue="pairs", style="texts", ax=ax)
ax.axhline(0.5, color="grey", lw=0.8)
ax.axvline(best, color="k", ls=":", lw=1, label=f"best layer ({best})")
ax.set(ylabel="probe AUROC", ylim=(-0.02, 1.02), title="The probe on pairs written to fool a keyword detector")
ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
plt.show()
show_table(stress.assign(**{"probe AUROC [95% CI]": [interval(r["probe AUROC"], r.lo, r.hi)
                                                     for _, r in stress.iterrows()]}),
           columns=["pairs", "texts", "probe AUROC [95% CI]", "keyword counter AUROC", "words replaced"])

# %%
cw, pt = stress_at.loc["care_words"], stress_at.loc["polite_task"]
print(f"care words: probe AUROC {cw.loc['original', 'probe AUROC']:.3f} -> {cw.loc['ablated', 'probe AUROC']:.3f} "
      f"after {int(cw.loc['ablated', 'words replaced'])} keywords are replaced "
      f"(drop {cw.loc['original', 'probe AUROC'] - cw.loc['ablated', 'probe AUROC']:+.3f}; goal: at most 0.05)")
print(f"polite task: probe AUROC {interval(*pt.loc['original', ['probe AUROC', 'lo', 'hi']])} "
      f"(0.5 is chance; the keyword counter gets {pt.loc['original', 'keyword counter AUROC']:.2f}); "
      f"{pt.loc['ablated', 'probe AUROC']:.2f} once the refusals lose their care words")

# %% [markdown]
# Read the table with the picture. On **care words**, ablation removes
# every keyword the empathic replies hold; what the probe loses is the drop
# to compare with the goal of 0.05 or less. On **polite task**, the probe
# must rank a reply that acts above one that only speaks kindly. On the
# bundled default model, no layer does this reliably: at the chosen layer
# (24) the probe scores 0.60 [0.41, 0.77], an interval that holds chance.
# Ablating the care words out of the refusals raises it to 0.84, and the
# later layers' AUROC with it, so the care words do pull refusals towards
# the empathic side. The task-focused replies here talk *to* the person
# *about their feelings*; the empathic ones say what they do. The probe
# reads the first as empathy, which the training pairs never had to tell
# apart from the second. Detection on the stored test pairs is real, but it
# is not detection of empathic *action*.

# %% tags=["remove-input"]
box_before, box_after = cw.loc["original", "probe AUROC"], cw.loc["ablated", "probe AUROC"]
box_polite = [pt.loc["original", k] for k in ("probe AUROC", "lo", "hi")]
box_where = "above" if round(box_polite[1], 2) > 0.5 else "below" if round(box_polite[2], 2) < 0.5 else \
    "an interval that includes"
display(result(
    f"Replacing the care words moves the probe's AUROC on the care-word pairs from {box_before:.2f} to "
    f"{box_after:.2f} (goal: a drop of at most 0.05, {'met' if box_before - box_after <= 0.05 else 'missed'}). "
    f"On polite refusals it scores {interval(*box_polite)}, {box_where} chance (0.50; a keyword counter: "
    f"{pt.loc['original', 'keyword counter AUROC']:.2f}), and {pt.loc['ablated', 'probe AUROC']:.2f} once their "
    f"care words are replaced."))

# %% [markdown]
# ## 3. Emotion directions (paper B)
#
# Paper B's prompts: a system prompt "Always reply in {emotion}..." and a
# scenario with a positive, neutral or negative event; activations at the
# last prompt token, before the model writes anything. A six-way logistic
# regression is scored held out *by scenario* (5-fold, no scenario in both
# train and test), so it cannot succeed by memorising scenarios. It reads
# 80 discovery scenarios, 10 per theme (QUICK mode 8; FULL all 160).
#
# A caution before the numbers: the instruction names the emotion, so a
# probe can succeed by reading the instruction's word. What survives the
# controls below (held-out scenarios; centred, context-agnostic
# directions) is a representation of *the instructed emotion*, which is
# what steering later uses; it is not evidence that the model feels
# anything.

# %%
disc_all = ds.load_named("sev_discovery")
per_theme = size(1, 10, 20)
chosen = ds.first_per_theme(disc_all, per_theme)
# the scenarios chapter 04 captures (its size(1, 5, 5) per theme) come from that shared capture
# (whichever chapter runs first pays); the others are captured here, residual stream only
prompts, E = emotion_acts.sev_residuals(lm, chosen, shared=ds.first_per_theme(disc_all, size(1, 5, 5)))
emotions = np.array([p["emotion"] for p in prompts])
scenario = np.array([p["record_id"] for p in prompts])
context = np.array([f"{p['record_id']}:{p['valence']}" for p in prompts])
print(f"{len(prompts)} prompts: {len(chosen)} scenarios x 3 valences x 6 emotions")

# %%
clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
cv = GroupKFold(n_splits=5)
E_LAYERS = LAYERS
emo_rows = []
for l in E_LAYERS:
    Xl = E[f"resid_post.{l}"].double().numpy()
    correct = []
    for tr_i, te_i in cv.split(Xl, emotions, scenario):
        pred = clf.fit(Xl[tr_i], emotions[tr_i]).predict(Xl[te_i])
        correct.extend((pred == emotions[te_i]).tolist())
    acc, lo, hi = bootstrap_ci(np.array(correct, float), n_boot=500, seed=SEED)
    sil = silhouette_score(PCA(10, random_state=SEED).fit_transform(readout.centre_by_group(Xl, context)), emotions)
    emo_rows.append({"layer": l, "accuracy": acc, "lo": lo, "hi": hi, "silhouette": sil})
emo_df = pd.DataFrame(emo_rows)
fig, ax = plt.subplots()
band(ax, emo_df.layer, emo_df.accuracy, emo_df.lo, emo_df.hi, label="six-way accuracy, held-out scenarios")
ax.plot(emo_df.layer, emo_df.silhouette, label="cluster separation (silhouette, centred, PCA-10)")
ax.axhline(1 / 6, color="grey", ls=":", label="chance (1/6)")
ax.set(xlabel="layer", ylim=(-0.2, 1.02), title=f"Where emotions separate in {MODEL}")
ax.legend(loc="center right", fontsize=8)
plt.show()
best_e = int(emo_df.loc[emo_df.accuracy.idxmax(), "layer"])
r = emo_df.set_index("layer").loc[best_e]
print(f"best layer {best_e}: six-way accuracy {interval(r.accuracy, r.lo, r.hi)} (chance 0.17)")

# %% [markdown]
# The best layer was picked by the same cross-validation that scores it,
# so that accuracy is a little optimistic (a maximum over layers). The
# test set removes the selection: a probe fitted on every discovery prompt
# at that layer, scored once on `sev_test` scenarios, which were written
# from other skeletons (QUICK mode skips this). The same probe fitted on
# fewer discovery scenarios per theme (the first 5 are the ones chapter 04
# uses) shows how much the accuracy owes to the amount of training data.

# %%
n_test_scen = size(0, 2, 5)
if n_test_scen:
    t_prompts = ds.sev_prompts(ds.first_per_theme(ds.load_named("sev_test"), n_test_scen))
    site_e = f"resid_post.{best_e}"
    X_t = capture(lm, [lm.chat_prompt(p["user"], system=p["system"]) for p in t_prompts], [site_e],
                  progress=False)[site_e].double().numpy()
    y_t = np.array([p["emotion"] for p in t_prompts])
    X_e, curve = E[site_e].double().numpy(), []
    for n in sorted({n for n in (5, 10) if n < per_theme} | {per_theme}):
        m = np.isin(scenario, [rec.id for rec in ds.first_per_theme(chosen, n)])
        t_pred = clf.fit(X_e[m], emotions[m]).predict(X_t)
        acc_n = bootstrap_ci((t_pred == y_t).astype(float), seed=SEED)
        curve.append({"discovery scenarios per theme": n, "training prompts": int(m.sum()),
                      "test accuracy [95% CI]": interval(*acc_n)})
    emo_test = acc_n  # the last row: every discovery prompt read
    display(pd.DataFrame(curve).style.hide(axis="index").set_caption(
        f"six-way probe at layer {best_e}, scored on {len(t_prompts)} test prompts (chance 0.17)"))
else:
    emo_test = (float("nan"),) * 3

# %% [markdown]
# On the default model the test accuracy rises with the number of training
# scenarios (a FULL run adds a row for all 20 per theme). So at this size
# the six-way probe is limited by its training data, not only by what the
# layer holds. The intervals are over test prompts only; a different draw
# of training scenarios would move each row too.
#
# Raw activations are dominated by *which scenario* is being read. So both
# the silhouette score above and the 2-D views below use activations
# centred within each scenario-valence group (what varies across the six
# instructions to the same scenario). PCA at four layers; colours are the
# instructed emotion.

# %%
show = [E_LAYERS[0], E_LAYERS[len(E_LAYERS) // 3], best_e, E_LAYERS[-1]]
fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
for ax, l in zip(axes, show):
    Z = PCA(2, random_state=SEED).fit_transform(readout.centre_by_group(E[f"resid_post.{l}"].double().numpy(), context))
    for emo_name in ds.EMOTIONS:
        m = emotions == emo_name
        ax.scatter(Z[m, 0], Z[m, 1], s=6, label=emo_name)
    sil = emo_df.set_index("layer").loc[l, "silhouette"]
    ax.set(title=f"layer {l} (silhouette {sil:.2f})", xticks=[], yticks=[])
axes[-1].legend(fontsize=7, markerscale=2, loc="best")
plt.show()

# %% [markdown]
# Clusters that appear already at the first layer are the instruction's
# emotion word being copied to the last position by the first attention
# layer; that is the caution above made visible. The layer where held-out
# accuracy peaks is the better place to look for a representation used
# downstream, and chapter 06 tests that by steering.
#
# Paper B's context-agnostic directions: within each scenario-valence
# group subtract the mean over the six emotions, average per emotion,
# centre across emotions and normalise. Their cosine similarities:

# %%
dirs = readout.centred_centroids(E[f"resid_post.{best_e}"].double().numpy(), emotions, context, ds.EMOTIONS)
cos = dirs @ dirs.T
fig, ax = plt.subplots(figsize=(4.8, 4))
sns.heatmap(cos, annot=True, fmt=".2f", cmap="vlag", center=0, xticklabels=ds.EMOTIONS,
            yticklabels=ds.EMOTIONS, cbar=False, ax=ax)
ax.set_title(f"Emotion directions, layer {best_e}")
plt.show()
off = cos - 2 * np.eye(6)
nearest = {e: ds.EMOTIONS[int(off[i].argmax())] for i, e in enumerate(ds.EMOTIONS)}
print("nearest neighbour of each direction:", nearest)
for a_, b_ in [("anger", "disgust"), ("sadness", "fear")]:
    i, j = ds.EMOTIONS.index(a_), ds.EMOTIONS.index(b_)
    rank = int((off[i] > off[i, j]).sum()) + 1
    print(f"{a_}-{b_}: cosine {cos[i, j]:+.2f}, rank {rank} of 5 among {a_}'s neighbours")
print(f"mean off-diagonal cosine {cos[~np.eye(6, dtype=bool)].mean():+.2f} (centring pushes it towards -0.20)")

# %% [markdown]
# Centring makes the six centroids sum to zero, so their average cosine is
# near -0.2 whatever the model does (exactly -0.2 if all six had the same
# length). Only departures from it carry information. Whether anger sits
# next to disgust and sadness next to fear is printed above for this model;
# the paper found these neighbours in larger models. On the default model
# they do not appear: disgust is anger's second-nearest direction, and fear
# is the farthest from sadness.

# %% tags=["remove-input"]
box_e = emo_df.set_index("layer").loc[best_e]
box_test = "" if np.isnan(emo_test[0]) else f" and {interval(*emo_test)} on test scenarios"
display(result(
    f"Held out by scenario, a six-way probe at layer {best_e} names the instructed emotion with accuracy "
    f"{interval(box_e.accuracy, box_e.lo, box_e.hi)}{box_test} (chance 0.17); anger's nearest direction is "
    f"{nearest['anger']} and sadness's {nearest['sadness']}, where paper B found disgust and fear."))

# %% [markdown]
# ## 4. Do two models agree? (paper A's open question 3)
#
# Paper A asked whether probes of different models agree on the same texts.
# First, the second bundled model's own layer-by-layer result with the
# `mean_response` probe. Then both models score the 215 replies of the
# empathy judges' first corpus, `judge_empathy.jsonl`, with their own
# best-layer empathy probe. No probe was trained on these texts. A FULL run
# takes all of them, the default book every fourth, QUICK mode every sixth.
# The alignment texts below are thinned too, to every sixth in the default
# book and every tenth in QUICK mode. Their raw agreement is a Pearson r
# between the two score lists. (The first cell also scores section 1's
# matched pairs at the second model's chosen layer: compare it with the
# first row of that section's table. In the default book, smollm2-135m's
# chosen layer 24 holds, 0.92, and so does gemma3-270m's chosen layer 12 of
# 18, 0.94, both far above their random directions' 95th percentiles
# (0.72). It also fits the probe trained on matched pairs, as in
# section 1.) Each reply is read as the assistant's answer to its
# situation, pooled over the reply, as the probe was trained. Then model
# B's activations are mapped into model A's space (PCA to 64 dimensions and
# an orthogonal Procrustes rotation). The map is fitted on texts of the
# emotion judge's corpus, 770 in a FULL run, disjoint from the 215. Model
# A's probe then scores the mapped activations. The permutation baseline
# fits the same map on mismatched texts.

# %%
other = load_model(OTHER)
O_LAYERS = list(range(0, other.n_layers, size(6, 4, 1)))
fit_o = P.fit_pair_probe(other, pairs, scen, layers=O_LAYERS, pooling=POOL, seed=SEED)
fit_a = fits[POOL]
fig, ax = plt.subplots(figsize=(8, 3.4))
for name, fit, ls in [(MODEL, fit_a, LAYERS), (OTHER, fit_o, O_LAYERS)]:
    band(ax, np.array(ls) / max(ls), [fit.at(l).auroc for l in ls], [fit.at(l).auroc_ci[0] for l in ls],
         [fit.at(l).auroc_ci[1] for l in ls], label=f"{name} (best layer {fit.best_layer}, "
         f"random p95 {fit.metrics['random_baseline']['p95']:.2f})")
ax.set(xlabel="relative depth (layer / last layer)", ylabel="test AUROC", ylim=(0.3, 1.02),
       title=f"Empathy probe ({POOL}) on both bundled models")
ax.legend(loc="lower right", fontsize=8)
plt.show()
tr_o = P.transfer_pairs(other, fit_o, matched, scen, layers=[fit_o.best_layer], seed=SEED)[fit_o.best_layer]
print(f"{OTHER}, layer {fit_o.best_layer} (best on the stored pairs), on the matched pairs: AUROC "
      f"{interval(tr_o['detection'].auroc, *tr_o['detection'].auroc_ci)}, pairs the right way round "
      f"{interval(tr_o['paired'], *tr_o['paired_ci'])}; random directions: AUROC p95 {tr_o['random']['p95']:.2f}, "
      f"pairs right way round p95 {tr_o['random']['paired_p95']:.2f}")
# the matched-pairs probe of section 1 on this model, on the main model's layer grid (every other layer)
fit_om = P.fit_pair_probe(other, fit_set, scen, layers=range(0, other.n_layers, size(6, 2, 1)), pooling=POOL,
                          seed=SEED)
peak_om = fit_om.metrics["test_best_layer"]  # exploratory: chosen on the test pairs
om = fit_om.at(peak_om)
bow_om = P.fit_pair_probe(other, fit_set, scen, layers=[0], pooling=POOL, site_kind="resid_pre", seed=SEED).at(0)
cv_om = P.cv_layer_auroc(other, fit_set, scen, layers=fit_om.layers, pooling=POOL)
cv_o = P.best_layer(cv_om)  # chosen on the train pairs alone
om_cv = fit_om.at(cv_o)
print(f"{OTHER} trained on the matched pairs: test-peak layer {peak_om}, AUROC {interval(om.auroc, *om.auroc_ci)}"
      f"; random directions: p95 {fit_om.metrics['random_baseline']['p95']:.2f}; bag of words "
      f"{interval(bow_om.auroc, *bow_om.auroc_ci)}; at the layer chosen on the train pairs ({cv_o}): AUROC "
      f"{interval(om_cv.auroc, *om_cv.auroc_ci)}")

# %%
emp_recs = corpora.read_corpus("judge_empathy")
align_texts = [r["text"] for r in corpora.read_corpus("judge_emotion")]
emp_recs, align_texts = emp_recs[:: size(6, 4, 1)], align_texts[:: size(10, 6, 1)]
la, lo_ = fit_a.best_layer, fit_o.best_layer


def reply_acts(model, layer, users, replies, pooling):
    """Pooled over the reply, given as the assistant's answer to its user message."""
    texts, starts = P.reply_texts(model, users, replies)
    site = f"resid_post.{layer}"
    return capture(model, texts, [site], pooling=pooling, response_starts=starts, progress=False)[site].double().numpy()


users = [r["situation"] for r in emp_recs]
replies = [r["reply"] for r in emp_recs]
A_rep, B_rep = reply_acts(lm, la, users, replies, POOL), reply_acts(other, lo_, users, replies, POOL)
# the alignment set: the emotion corpus's texts as replies to one fixed message
A_al = reply_acts(lm, la, ["Say something."] * len(align_texts), align_texts, POOL)
B_al = reply_acts(other, lo_, ["Say something."] * len(align_texts), align_texts, POOL)
s_a = A_rep @ fit_a.directions[la]
s_b = B_rep @ fit_o.directions[lo_]
raw_r = pearsonr(s_a, s_b)[0]
align = readout.align_procrustes(A_al, B_al, k=64)
al_r = pearsonr(s_a, align(B_rep) @ fit_a.directions[la])[0]
rng = np.random.default_rng(SEED)
null_raw = [pearsonr(s_a, rng.permutation(s_b))[0] for _ in range(1000)]
null_al = [pearsonr(s_a, readout.align_procrustes(A_al, B_al[rng.permutation(len(B_al))], k=64)(B_rep)
                    @ fit_a.directions[la])[0] for _ in range(size(20, 50, 50))]


raw_ci, al_ci = (correlation_ci(s_a, y, "pearson", seed=SEED) for y in (s_b, align(B_rep) @ fit_a.directions[la]))
show_table(pd.DataFrame([
    {"comparison": f"{MODEL} probe vs {OTHER} probe (own spaces)", "Pearson r [95% CI]": interval(*raw_ci),
     "baseline (mean / 95th pct)": f"permuted texts: {np.mean(null_raw):+.2f} / {np.quantile(null_raw, .95):+.2f}"},
    {"comparison": f"{MODEL} probe on {OTHER} activations mapped into {MODEL}'s space",
     "Pearson r [95% CI]": interval(*al_ci),
     "baseline (mean / 95th pct)": f"map fitted on mismatched texts: {np.mean(null_al):+.2f} / "
                                   f"{np.quantile(null_al, .95):+.2f}"},
]))

# %% [markdown]
# The raw correlation says whether the two models *order* the replies alike
# by their own probes. The aligned one says whether a single probe
# transfers across models once the spaces are matched on unrelated text.
# Judge both against their baselines. Both centre on zero; their 95th
# percentiles are how high a correlation gets by chance with this many
# replies. On the default model both clear their baselines by a wide
# margin. The raw agreement is 0.69 [0.47, 0.83] against a 95th percentile
# of 0.23 (the two models order unseen replies alike). The aligned one is
# 0.77 [0.67, 0.85] against 0.33: a probe carried across through a map
# fitted on unrelated text keeps much of its ranking.

# %% tags=["remove-input"]
box_null = {"raw": np.quantile(null_raw, .95), "aligned": np.quantile(null_al, .95)}
box_vs = {k: "above" if round(ci[1], 2) > round(box_null[k], 2) else "not clearly above"
          for k, ci in (("raw", raw_ci), ("aligned", al_ci))}
display(result(
    f"On {len(s_a)} unseen replies the two models' own probes agree with Pearson r {interval(*raw_ci)}, "
    f"{box_vs['raw']} permuted texts' 95th percentile ({box_null['raw']:.2f}); {MODEL}'s probe on {OTHER}'s "
    f"activations mapped into its space gives {interval(*al_ci)}, {box_vs['aligned']} a map fitted on mismatched "
    f"texts ({box_null['aligned']:.2f})."))

# %% [markdown]
# ## 5. Does the probe rank replies to situations the pairs never cover?
#
# The pairs come from five games. The empathy judges' first two corpora
# (chapter 02) hold 635 replies to 127 other situations, one per grade. Of
# these situations, 90 are personal (messages from friends, colleagues,
# strangers, forum posts, customer desks, messages to a chat assistant) and
# 37 are other games. Each reply is graded 1-5 by its author (QUICK mode
# keeps every sixth situation with all five of its replies). Every reply is
# scored by the probe at its best layer, as the assistant's answer to the
# situation. Does it rank the empathic replies (grade 4-5) above the
# dismissive or task-only ones (1-2)?
# **Baselines:** chance (0.5) and paper A's keyword count on the same
# replies.

# %%
# the judge's first two graded corpora, checked as the judge reads them (the third has a blind labeller's
# grades, not one reply per grade)
graded, _ = corpora.empathy_corpus([ds.DATA_DIR / f"{n}.jsonl" for n in corpora.EMPATHY_CORPORA[:2]])
kept = sorted({r["situation"] for r in graded})[:: size(6, 1, 1)]  # QUICK: every sixth situation, all five grades
graded = [r for r in graded if r["situation"] in kept]
gr_texts, gr_starts = P.reply_texts(lm, [r["situation"] for r in graded], [r["reply"] for r in graded])
gr_score = P.score_texts(lm, fits[POOL], gr_texts, response_starts=gr_starts)
grade = np.array([r["score"] for r in graded])
high, low = grade >= 4, grade <= 2
gr_auc = readout.auroc_ci(gr_score[high], gr_score[low], seed=SEED)
gr_kw = ds.keyword_counts([r["reply"] for r in graded])
gr_kw_auc = readout.auroc_ci(gr_kw[high], gr_kw[low], seed=SEED)
game = np.array([r["setting"] == "game" for r in graded])  # other games told by an agent: the pairs' genre
gr_personal = readout.auroc_ci(gr_score[high & ~game], gr_score[low & ~game], seed=SEED)
# empathic vs task-focused: the pairs' contrast
gr_task = readout.auroc_ci(gr_score[high], gr_score[grade == 2], seed=SEED)
gr_cold = readout.auroc_ci(gr_score[high], gr_score[grade == 1], seed=SEED)  # empathic vs dismissive
print(f"{high.sum()} replies graded 4-5 vs {low.sum()} graded 1-2, {len({r['situation'] for r in graded})} "
      f"situations: probe AUROC {interval(*gr_auc)}; keyword count {interval(*gr_kw_auc)}; chance 0.50")
print(f"split by the low grade: 4-5 vs task only (2, {(grade == 2).sum()} replies) {interval(*gr_task)}; "
      f"4-5 vs dismissive (1, {(grade == 1).sum()} replies) {interval(*gr_cold)}")
print(f"the {len({r['situation'] for r, g in zip(graded, game) if not g})} personal situations only "
      f"(no game, unlike every pair): probe AUROC {interval(*gr_personal)}")
fig, ax = plt.subplots(figsize=(5, 3.2))
sns.boxplot(x=grade, y=gr_score, color="#9ecae1", ax=ax)
ax.set(xlabel="author's grade (1 = dismissive, 2 = task only, 5 = deeply attuned)",
       ylabel=f"probe projection (layer {best})", title="The probe on graded replies to new situations")
plt.show()

# %% [markdown]
# The probe ranks replies to new situations above chance (0.76 [0.72, 0.80]
# on the default model), with much less separation than on the held-out
# pairs. It does a little less well again on the 90 personal situations,
# the farthest from the games it was trained on (0.73 [0.67, 0.78]). The
# pairs contrast caring with pursuing a game's objective; these replies
# contrast warm with cold, practical-only or dismissive answers, a subtler
# contrast. A keyword count is near chance here (0.52): about a fifth of
# the dismissive replies say "sorry" or "understand" perfunctorily, and
# most warm ones use no word of the lexicon. So what the probe picks up is
# not the lexicon. The split by the low grade and the boxes show where the
# ranking comes from. Against task-only replies (grade 2), the contrast the
# pairs teach, empathic replies separate well (0.94 [0.91, 0.96]). Against
# dismissive ones (grade 1) the probe does much worse (0.59 [0.53, 0.65]),
# just above chance: on the default model dismissive replies project only a
# little below warm ones. That fits the polite-refusal test above: the
# probe separates replies about the task from replies about the person, not
# kind ones from unkind ones.

# %% tags=["remove-input"]
box_situations = len({r["situation"] for r in graded})
display(result(
    f"On {high.sum() + low.sum()} graded replies to {box_situations} situations the pairs never cover, the probe's "
    f"AUROC for grades 4-5 against 1-2 is {interval(*gr_auc)}, against {interval(*gr_kw_auc)} for a keyword count "
    f"(chance 0.50): {interval(*gr_task)} against task-only replies, {interval(*gr_cold)} against dismissive ones."))

# %% [markdown]
# ## 6. Does the probe track the empathy of real generations?
#
# The last check uses the model's own greedy replies to held-out situations
# (20 in a FULL run, 8 in the default book, 4 in QUICK mode; none of them
# in the pairs). The replies are written under paper C's empathetic and
# neutral system prompts. Each reply is scored by the `mean_response` probe
# and by chapter 02's tuning empathy judge, which reads the word and
# character n-grams of the reply alone.

# %%
cp = {r.id: r for r in ds.load_named("circuit_prompts")}
situations = [r.text for r in ds.load_named("situations_heldout")][: size(4, 8, 20)]
gen_prompts = [{"id": f"{k}-{i}", "user": s, "system": cp[k].text}
               for k in ("empathetic-2", "neutral-1") for i, s in enumerate(situations)]
gens = elicit(lm, gen_prompts, max_new_tokens=size(24, 40, 60), seed=SEED, progress=False)
full = [lm.chat_prompt(g.user, system=g.system) + g.text for g in gens]
g_starts = [len(lm.chat_prompt(g.user, system=g.system)) for g in gens]
keep = [i for i, g in enumerate(gens) if g.text.strip()]
probe_s = P.score_texts(lm, fits[POOL], [full[i] for i in keep], response_starts=[g_starts[i] for i in keep])
judge_s = J.EmpathyJudge(use_all=True, seed=SEED).score([gens[i].text for i in keep], [gens[i].user for i in keep])
r_est, r_lo, r_hi = correlation_ci(probe_s, judge_s, "pearson", seed=SEED)
null_gen = [pearsonr(probe_s, rng.permutation(judge_s))[0] for _ in range(1000)]
print(f"{len(keep)} replies: Pearson r(probe, judge) = {interval(r_est, r_lo, r_hi)}; "
      f"permutation 95th percentile {np.quantile(null_gen, .95):+.2f}")
fig, ax = plt.subplots(figsize=(5, 3.6))
kinds = np.array(["empathetic prompt" if gens[i].prompt_id.startswith("emp") else "neutral prompt" for i in keep])
for k in np.unique(kinds):
    ax.scatter(probe_s[kinds == k], judge_s[kinds == k], s=18, label=k)
ax.set(xlabel=f"probe projection (layer {best}, {POOL})", ylabel="judged empathy (1-5)",
       title="Probe vs judge on the model's own replies")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Read r against the permutation 95th percentile. On the default model,
# over 16 replies, r is 0.35 [0.05, 0.68]: positive, with an interval
# that only just clears zero, but below the 0.43 that shuffled pairings
# reach one time in twenty. Across the model's own replies the probe
# tracks judged empathy weakly at best; this test cannot tell it from
# chance. Section 5 suggests why.
# These replies answer personal situations, so they differ more in warmth
# (what the judge scores) than in attention to the person against a task
# (what the probe reads).

# %% tags=["remove-input"]
box_null = np.quantile(null_gen, .95)
box_digits = 3 if f"{r_est:.2f}" == f"{box_null:.2f}" else 2  # a third digit where two would read as a tie
display(result(
    f"Over the model's {len(keep)} own replies, the probe and the tuning empathy judge correlate with Pearson r "
    f"{interval(r_est, r_lo, r_hi, box_digits)}, {'above' if r_est > box_null else 'not above'} the "
    f"{box_null:.{box_digits}f} that shuffled pairings reach one time in twenty."))

# %% [markdown]
# ## Headline numbers
#
# Recorded for the results chapter and the regression check.

# %%
def best_of(fit, prefix, random_key):
    b = fit.at(fit.best_layer)
    return {prefix: (b.auroc, *b.auroc_ci),
            f"{prefix}_layer": fit.best_layer, random_key: fit.metrics["random_baseline"]["p95"],
            f"{random_key}_unoriented": fit.metrics["random_baseline_unoriented"]["p95"],
            f"{prefix}_d": b.cohens_d, f"{random_key}_d": fit.metrics["random_baseline"]["d_p95"],
            f"{random_key}_pc1": fit.metrics["pc_baseline"]["auroc"][0]}


e_best = emo_df.set_index("layer").loc[best_e]
headline = record(
    **best_of(fits["mean_all"], "auroc_mean_all", "random_p95_mean_all"),
    **best_of(fits[POOL], "auroc_response", "random_p95_response"),
    **best_of(fit_o, "other_auroc", "other_random_p95"),
    matched_auroc=(transfer[best]["detection"].auroc, *transfer[best]["detection"].auroc_ci),
    matched_random_p95=transfer[best]["random"]["p95"],
    matched_paired=(transfer[best]["paired"], *transfer[best]["paired_ci"]),
    matched_random_paired_p95=transfer[best]["random"]["paired_p95"],
    matched_peak_auroc=(transfer[peak]["detection"].auroc, *transfer[peak]["detection"].auroc_ci),
    matched_peak_layer=peak, matched_peak_random_p95=transfer[peak]["random"]["p95"],
    matched_peak_paired=transfer[peak]["paired"], matched_peak_d=transfer[peak]["detection"].cohens_d,
    matched_peak_random_d_p95=transfer[peak]["random"]["d_p95"], bow_auroc=bow_stored,
    bow_matched_auroc=(bow_matched["detection"].auroc, *bow_matched["detection"].auroc_ci),
    other_matched_auroc=(tr_o["detection"].auroc, *tr_o["detection"].auroc_ci),
    other_matched_random_p95=tr_o["random"]["p95"],
    matched_fit_auroc=(fit_m.at(best_m).auroc, *fit_m.at(best_m).auroc_ci), matched_fit_layer=best_m,
    matched_fit_random_p95=m_tr[best_m]["random"]["p95"], matched_fit_random_d_p95=m_tr[best_m]["random"]["d_p95"],
    matched_fit_d=fit_m.at(best_m).cohens_d, matched_fit_paired=m_tr[best_m]["paired"],
    matched_fit_cv_layer=cv_best, matched_fit_cv_auroc=(fit_m.at(cv_best).auroc, *fit_m.at(cv_best).auroc_ci),
    matched_fit_cv_random_p95=m_tr[cv_best]["random"]["p95"],
    matched_fit_bow_auroc=(bow_m_tr["detection"].auroc, *bow_m_tr["detection"].auroc_ci),
    matched_fit_pronoun_auroc=pron_auc, matched_fit_on_stored_auroc=on_stored.auroc,
    other_matched_fit_auroc=(om.auroc, *om.auroc_ci), other_matched_fit_layer=peak_om,
    other_matched_fit_random_p95=fit_om.metrics["random_baseline"]["p95"], other_matched_fit_bow_auroc=bow_om.auroc,
    other_matched_fit_cv_layer=cv_o, other_matched_fit_cv_auroc=om_cv.auroc,
    ablated_auroc=(abl_best.ablated, abl_best.ablated_lo, abl_best.ablated_hi), graded_auroc=gr_auc,
    graded_keyword_auroc=gr_kw_auc[0], graded_task_auroc=gr_task, graded_dismissive_auroc=gr_cold,
    graded_personal_auroc=gr_personal, care_words_auroc=stress_at.loc[("care_words", "original"), "probe AUROC"],
    care_words_ablated_auroc=tuple(stress_at.loc[("care_words", "ablated"), ["probe AUROC", "lo", "hi"]]),
    polite_task_auroc=tuple(stress_at.loc[("polite_task", "original"), ["probe AUROC", "lo", "hi"]]),
    polite_task_ablated_auroc=stress_at.loc[("polite_task", "ablated"), "probe AUROC"],
    emotion_accuracy=(e_best.accuracy, e_best.lo, e_best.hi), emotion_test_accuracy=emo_test, cross_r_raw=raw_ci,
    cross_r_raw_null_p95=np.quantile(null_raw, .95), cross_r_aligned=al_ci,
    cross_r_aligned_null_p95=np.quantile(null_al, .95), behaviour_r=(r_est, r_lo, r_hi),
    behaviour_r_null_p95=np.quantile(null_gen, .95))
pd.Series(headline).to_frame("value")

# %% [markdown]
# ## What this chapter cannot show
#
# - **Use.** A readable direction may be a by-product. Chapters 05 and 06
#   intervene on it and measure whether behaviour follows.
# - **Generality.** Fifteen test pairs give wide intervals (see the
#   brackets); five game scenarios are a narrow slice of empathy. The
#   held-out situations, the matched pairs and the judges' corpus widen
#   it a little.
# - **Words against meaning.** A bag of words comes within 0.05 of the
#   probe on the stored pairs and on the matched pairs. Trained on matched
#   pairs, it stays within 0.03 on the default model and 0.06 on
#   gemma3-270m, and a count of pronouns reaches 0.85. Natural replies that
#   serve a person use different words from replies that serve a task. So
#   no test here can show that a direction reads the intent rather than its
#   vocabulary; the polite-refusal pairs come closest, and the probe fails
#   them.
# - **Feeling.** Emotion directions here represent an *instructed* emotion,
#   read at a prompt that names it.
# - **Small models.** Both bundled models are tiny; the papers' models
#   are 2B-8B. `MODEL = "gemma-2-2b-it"` (GPU) re-runs everything on one.
#
# ## Summary
#
# - `probes.fit_pair_probe` (and `emocircuits probe`) fits, tests and
#   baselines a probe at every layer; `emocircuits score` applies it.
# - Pool over the reply: `mean_all` dilutes the signal with the shared
#   prompt.
# - Removing care words does not hurt the probe, even where there are many
#   to remove. But polite refusals fool it (0.60 at the chosen layer,
#   chance inside the interval), largely through their care words: removing
#   them lifts it to 0.84. It reads attention to feelings more than
#   empathic action (`eia_lexical`).
# - On pairs whose sides share a frame, length and register
#   (`eia_matched`), the middle and late layers keep separating the sides
#   far above random directions. The layer chosen on the stored pairs'
#   training split is among them (0.92 on the default model), and a bag of
#   words does nearly as well. Choosing that layer by test AUROC instead
#   picked an early layer that does not carry over (0.71). A layer chosen
#   by looking at one set of test pairs needs a second, differently written
#   set to be trusted. Trained on the matched set's own 40 training pairs,
#   the probe reaches 0.96 (default model) and 0.98 (gemma3-270m) on its
#   test pairs. At a layer chosen on the training pairs alone it reaches
#   0.95 and 0.98, with random directions' 95th percentile at 0.72-0.76; a
#   bag of words reaches 0.93.
# - On graded replies to situations the pairs never cover, the probe ranks
#   empathic replies above task-only ones well, and above dismissive ones
#   barely. It reads the pairs' contrast, person against task, not warm
#   against cold.
# - The numbers above, with their baselines, are this model's answer to
#   each of paper A's and paper B's detection questions.

# %% [markdown]
# ### References
#
# - Paper A: *Detecting and Steering LLMs' Empathy in Action*,
#   [arXiv:2511.16699](https://arxiv.org/abs/2511.16699): mean-difference
#   probes, AUROC per layer, lexical ablation, cross-model agreement.
# - Paper B: *Do LLMs "Feel"? Emotion Circuits Discovery and Control*,
#   [arXiv:2510.11328](https://arxiv.org/abs/2510.11328): context-agnostic
#   emotion directions.
# - Alain and Bengio, *Understanding intermediate layers using linear
#   classifier probes*,
#   [arXiv:1610.01644](https://arxiv.org/abs/1610.01644): reading a layer
#   with a linear probe.
# - The appendix {doc}`Methods notes </book/methods>`: why layers are
#   chosen on training pairs and test-peak layers are exploratory.
