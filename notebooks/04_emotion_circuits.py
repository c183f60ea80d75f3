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
# # 04 · Emotion circuits: neurons, heads, sublayers and assembled circuits
#
# **Objectives.** By the end of this chapter you will
# - split what each MLP and attention sublayer writes along an emotion
#   direction into one term per neuron and per head, and see how long the
#   tail is;
# - test whether the top components *cause* the emotion's signal, against
#   as many random components of the same layers (paper B's code has no
#   such control);
# - measure how strongly a push at each sublayer reaches the last layer
#   (sublayer influence);
# - assemble a circuit per emotion under a budget, and use it to make the
#   model write in an emotion it was not asked for;
# - see where paper B's way falls short on a small model, and try a variant
#   that builds the circuits from text expressing the emotion;
# - pick between the two per emotion, tested on prompts kept fresh for it.
#
# This follows paper B (*Do LLMs "Feel"? Emotion Circuits Discovery and
# Control*), which ran on Llama-3.2-3B-Instruct; here it runs on the
# bundled models, so the numbers are a small model's, not the paper's.
#
# The prose quotes the default book's numbers (smollm2-135m), read with
# chapter 02's two judges. The tuning judge makes every choice here. The
# held-out tables show the reporting judge beside it: its share on target
# (`reported`) and its agreement with the tuning judge (`kappa`).

# %% [markdown]
# ```{include} ../book/_gpu.md
# ```

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # any name from `emocircuits models`
QUICK = False  # True: fewer items, for the test suite
FULL = False  # True: the largest samples (for a GPU; hours on a CPU)
SEED = 0
# section 7's decoding and where its heads are pushed (paper B's released code: 1.1, 3, "all"; see there)
REP_PENALTY = 1.2
NO_REPEAT_NGRAM = 0
HEAD_POSITIONS = "last:1"

# %%
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import display

from emocircuits import causal
from emocircuits import choosing
from emocircuits import circuits as C
from emocircuits import contributions
from emocircuits import datasets as ds
from emocircuits import emotion_acts
from emocircuits import judges as J
from emocircuits import load_model
from emocircuits.records import record, sizer
from emocircuits.cache import cache_dir
from emocircuits.coherence import coherence
from emocircuits.generation import Decoding, generate, generate_grid, next_token_logits
from emocircuits.lexical import EMOTION_STEMS, names_emotion
from emocircuits.page import result
from emocircuits.plots import neuron_token_values, neuron_view, setup_style
from emocircuits.protocol import Experiment
from emocircuits.stats import bootstrap_ci
from emocircuits.tables import interval, show

setup_style()
size = sizer(QUICK, FULL)  # size(quick, book, full): this run's value of a sample size
pd.set_option("display.precision", 3)
torch.manual_seed(SEED)
lm = load_model(MODEL)
EMO = list(ds.EMOTIONS)
L = lm.n_layers
print(lm)

# %% [markdown]
# ## 1. Prompts, activations and emotion directions
#
# Paper B's prompts (chapter 01): a scenario and an event of positive,
# neutral or negative valence, under the system prompt "Always reply in
# {emotion}. ...". We take the discovery scenarios and record every
# sublayer's activation at the last prompt token. Then we compute paper B's
# context-agnostic direction per emotion at every site (chapter 03): per
# (scenario, valence) group subtract the mean over emotions, average per
# emotion, centre, normalise.
#
# Paper B keeps only replies a judge accepted as the instructed emotion.
# We use every prompt: the activations are read *before* the model writes
# anything, and a 135M model follows the instruction too rarely (chapter 01)
# to leave every group complete. `component_scores(..., keep=accepted)`
# applies the filter when a larger model makes it affordable.

# %%
all_disc = ds.load_named("sev_discovery")
disc = ds.first_per_theme(all_disc, size(1, 2, 3))
# rows of the capture chapter 03 makes of more scenarios (whichever chapter runs first pays for it)
prompts, acts = emotion_acts.sev_activations(lm, ds.first_per_theme(all_disc, size(1, 5, 5)), keep=disc)
labels = [p["emotion"] for p in prompts]
groups = [f"{p['record_id']}:{p['valence']}" for p in prompts]
dirs = emotion_acts.directions(acts, labels, groups, EMO)
print(f"{len(prompts)} prompts ({len(disc)} scenarios x 3 valences x 6 emotions), {len(acts)} sites")

# %% tags=["remove-input"]
# how good the directions are: leave one scenario out, compute the last layer's directions from the others, and
# ask on which direction each left-out prompt projects most, centred per group as the directions are
last_site = f"resid_post.{L - 1}"
scenario_of, label_of, group_of = (np.array(v) for v in ([p["record_id"] for p in prompts], labels, groups))
last_acts = acts[last_site].double().numpy()
loso_acc = []
for left_out in np.unique(scenario_of):
    out_ = scenario_of == left_out
    d_ = emotion_acts.directions({last_site: last_acts[~out_]}, list(label_of[~out_]), list(group_of[~out_]),
                                 EMO)[last_site]
    x_ = last_acts[out_] - pd.DataFrame(last_acts[out_]).groupby(group_of[out_]).transform("mean").to_numpy()
    loso_acc.append(np.mean((x_ @ d_.T).argmax(1) == np.array([EMO.index(e_) for e_ in label_of[out_]])))
display(result(
    f"From {len(prompts)} instructed prompts come six emotion directions at each of {len(dirs)} residual-stream "
    f"sites; at the last layer, directions computed without a scenario pick out the instructed emotion of "
    f"{interval(*bootstrap_ci(np.array(loso_acc), seed=SEED))} of its prompts, centred as the directions are "
    f"(chance {1 / len(EMO):.2f})."))

# %% [markdown]
# ## 2. Neurons: who writes the emotion into the residual stream?
#
# The MLP's output is `W_down a`, a sum over neurons. Projected on the
# emotion direction `v` of the layer's output, neuron `i` contributes
# `a_i (W_down[:, i] . v)`: an exact split of the MLP's write along `v`. On
# Gemma we hold the post-MLP norm's scale fixed, which keeps the split
# exact. We average each neuron's term over the prompts of each emotion,
# after subtracting what every emotion shares in a context (the same
# centring as the directions).
#
# **Baseline.** How concentrated should we expect the contributions to be
# anyway? We repeat the split along a random unit direction: whatever tail
# that shows comes from the activations' own heavy tails, not from emotion.

# %%
neuron_scores, head_scores = contributions.component_scores(lm, acts, dirs, labels, groups, EMO)
rng = np.random.default_rng(SEED)
rand_dirs = {k: np.tile(rng.normal(size=(1, v.shape[1])), (len(EMO), 1)) for k, v in dirs.items()}
rand_dirs = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in rand_dirs.items()}
rand_neurons, _ = contributions.component_scores(lm, acts, rand_dirs, labels, groups, EMO)

tail = []
for e, emo in enumerate(EMO):
    allv = np.concatenate([neuron_scores[l][e] for l in range(L)])
    base = np.concatenate([rand_neurons[l][e] for l in range(L)])
    t, tb = contributions.tail_share(allv), contributions.tail_share(base)
    tail.append({"emotion": emo, "top 1%": t[0.01], "top 5%": t[0.05],
                 "top 1% (random dir)": tb[0.01], "top 5% (random dir)": tb[0.05]})
tail = pd.DataFrame(tail).set_index("emotion")
display(show(tail.reset_index(), columns={
    "emotion": "emotion", "top 1%": "top 1% of neurons", "top 5%": "top 5% of neurons",
    "top 1% (random dir)": "top 1%, random direction", "top 5% (random dir)": "top 5%, random direction"}))
print(f"{L * lm.d_mlp} neurons; share of the positive contribution mass carried by the top 1% and 5%")

# %%
fig, ax = plt.subplots(figsize=(7, 3.4))
for e, emo in enumerate(EMO):
    allv = np.sort(np.clip(np.concatenate([neuron_scores[l][e] for l in range(L)]), 0, None))[::-1]
    ax.plot(np.arange(1, len(allv) + 1) / len(allv), np.cumsum(allv) / allv.sum(), label=emo)
base = np.sort(np.clip(np.concatenate([rand_neurons[l][0] for l in range(L)]), 0, None))[::-1]
ax.plot(np.arange(1, len(base) + 1) / len(base), np.cumsum(base) / base.sum(), "k--", label="random direction")
ax.set(xscale="log", xlabel="share of neurons (ranked)", ylabel="share of positive contribution",
       title="How few neurons carry each emotion's write")
ax.legend(ncol=2, fontsize=8)
plt.show()

# %%
top_rows = []
for e, emo in enumerate(EMO):
    flat = [(neuron_scores[l][e][i], l, i) for l in range(L) for i in np.argsort(-neuron_scores[l][e])[:3]]
    for s, l, i in sorted(flat, reverse=True)[:3]:
        top_rows.append({"emotion": emo, "layer": l, "neuron": int(i), "mean contribution": s})
display(show(pd.DataFrame(top_rows), caption="each emotion's three neurons with the largest mean contribution"))

# %% tags=["remove-input"]
heavier = int((tail["top 1%"] > tail["top 1% (random dir)"]).sum())
display(result(
    f"The top 1% of the {L * lm.d_mlp:,} neurons carry {tail['top 1%'].mean():.2f} of the positive contribution "
    f"along an emotion's direction (mean over emotions), against {tail['top 1% (random dir)'].mean():.2f} along a "
    f"random direction; the tail is heavier than the random direction's for {heavier} of {len(EMO)} emotions."))

# %% [markdown]
# ## 3. Heads: zeroing one head at a time
#
# Paper B zeroes one head's slice of the attention output projection's
# input and measures the drop of the projection on the emotion direction at
# the layer's MLP input. On a Llama-style model that drop is exactly the
# head's term `W_O[:, head] z_head . v`, so all heads of all layers come
# from one pass. The test suite checks the equality against real zeroing.
# Below: each head's mean contribution for two emotions.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
for ax, emo in zip(axes, ["happiness", "anger"]):
    e = EMO.index(emo)
    M = np.stack([head_scores[l][e] for l in range(L)])
    lim = np.abs(M).max()
    sns.heatmap(M, cmap="vlag", center=0, vmin=-lim, vmax=lim, ax=ax, cbar=ax is axes[-1])
    ax.set(title=emo, xlabel="head", ylabel="layer" if ax is axes[0] else "")
fig.suptitle("Head contributions along the emotion direction at the MLP input")
plt.show()

# %% tags=["remove-input"]
# the heads' split along section 2's random direction: how heavy a tail the activations give anyway
rand_heads = {l: contributions.scores_by_emotion(
                  contributions.head_contributions(lm, l, acts[f"attn_z.{l}"], rand_dirs[f"resid_mid.{l}"]),
                  labels, groups, EMO).numpy() for l in range(L)}
head_tail, rand_head_tail = (np.mean([contributions.tail_share(np.concatenate([sc[l][e] for l in range(L)]))[0.05]
                                      for e in range(len(EMO))]) for sc in (head_scores, rand_heads))
all_heads = np.stack([head_scores[l] for l in range(L)])  # [layer, emotion, head]
top_l, top_e, top_h = np.unravel_index(np.argmax(all_heads), all_heads.shape)
than_random = ("as much as" if round(head_tail, 2) == round(rand_head_tail, 2)
               else "more than" if head_tail > rand_head_tail else "less than")
display(result(
    f"The top 5% of the {L * lm.n_heads} heads carry {head_tail:.2f} of the positive contribution along an emotion's "
    f"direction (mean over emotions), {than_random} along a random direction ({rand_head_tail:.2f}); the largest "
    f"term is head {top_h} of layer {top_l}, for {EMO[top_e]}."))

# %% [markdown]
# ## 4. Sublayer influence
#
# Which sublayers can move the emotion signal at the last layer? For each
# sublayer we add `alpha x sigma x u` at its output, at the last prompt
# position. Here `u` is the sublayer's own emotion direction and `sigma`
# the RMS of the residual stream right after it. We then read the change
# `delta` of the last layer's projection on that emotion's direction:
# `I = delta / (alpha x sigma)`, averaged over alphas. `I = 1` means the
# push arrives undiminished along the reference direction.
#
# The prompts carry no emotion instruction (the setting circuits are used
# in). **Baseline:** a seventh row pushes a random unit direction instead
# and reads it on the happiness direction: what any push of that size
# leaks onto an emotion direction.

# %%
neutral = ds.sev_prompts(disc[: size(4, 4, 12)], emotions=None, valences=("neutral",))
neutral_texts = [lm.chat_prompt(p["user"]) for p in neutral]
rand_u = rng.normal(size=lm.d_model)
alphas = size((1.0,), (0.5, 2.0), (0.5, 1.0, 2.0))


# I per layer and emotion for a set of directions, plus a random push (last column) read on happiness's
# direction; one batch of QUICK's 4 prompts (a forward per sublayer is mostly fixed cost), 2 at the larger sizes
influence = partial(emotion_acts.sublayer_influences, lm, texts=neutral_texts, emotions=EMO, random_push=rand_u,
                    alphas=alphas, batch_size=size(4, 2, 2))
infl = influence(dirs)

fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), sharey=True)
names = EMO + ["random (base)"]
for ax, kind in zip(axes, ("attn", "mlp")):
    sns.heatmap(infl[kind], cmap="vlag", center=0, ax=ax, xticklabels=names, cbar=kind == "mlp")
    ax.set(title=f"{kind} sublayers", xlabel="", ylabel="layer" if kind == "attn" else "")
fig.suptitle(f"Sublayer influence I on the last layer ({len(neutral_texts)} prompts, alphas {alphas})")
plt.show()
summary = pd.DataFrame({k: [np.nanmean(infl[k][:, :6]), np.nanmax(infl[k][:, :6]),
                            np.nanmean(np.abs(infl[k][:, 6]))] for k in ("attn", "mlp")},
                       index=["mean I (emotions)", "max I (emotions)", "mean |I| (random push)"])
display(show(summary.rename_axis("influence I").reset_index(),
             columns={"influence I": "influence I", "attn": "attention sublayers", "mlp": "MLP sublayers"}))

# %% tags=["remove-input"]
mean_infl = {"attention": summary.loc["mean I (emotions)", "attn"], "MLP": summary.loc["mean I (emotions)", "mlp"]}
random_infl = summary.loc["mean |I| (random push)"].mean()
above_random = [kind for kind, v in mean_infl.items() if v > random_infl]
display(result(
    f"Pushed along their emotion's direction, attention sublayers reach the last layer with mean influence "
    f"I = {mean_infl['attention']:.2f} and MLP sublayers with {mean_infl['MLP']:.2f}, against a mean |I| of "
    f"{random_infl:.2f} for a random push of the same size: "
    + ("both kinds lie above it." if len(above_random) == 2 else f"only the {above_random[0]} sublayers lie above it."
       if above_random else "neither kind lies above it.")))

# %% [markdown]
# ## 5. Assembling circuits
#
# Paper B chose 560 components on a 28-layer model: 392 MLP neurons and 168
# heads. It took at least 4 neurons and 2 heads per layer, no layer above
# 40% of the budget, and shared the rest in proportion to each sublayer's
# influence. `default_budget` keeps the same *shares* of all neurons and
# heads for this model (it is a parameter of `assemble`). Within a layer
# the highest-scoring components are taken. Each circuit is written as JSON
# (layer, kind, index, score per component) under the cache folder, one
# folder per model and run size. `circuits.Circuit.from_json` reads one
# back, for use outside the book. Under the table of how many components
# two circuits share, its baseline: what circuits drawn at random within
# the same layers would share, by kind. A layer has few heads, so random
# circuits share heads too; shared neurons are what chance does not give.

# %%
budget = C.default_budget(lm)
print(f"budget: {budget['n_neurons']} neurons and {budget['n_heads']} heads, at least {budget['min_neurons']} "
      f"neuron(s) and {budget['min_heads']} head(s) per layer, no layer above {budget['cap']:.0%} of the budget")
out_dir = cache_dir("circuits") / lm.name / size.name  # "quick", "book" or "full"


circuits = C.assemble_each(lm, EMO, neuron_scores, head_scores, infl, budget, out_dir=out_dir)
print(f"wrote {len(circuits)} circuits to {out_dir}")

fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), sharey=True)
for ax, k, kind in zip(axes, (0, 1), ("neurons", "heads")):
    M = np.stack([circuits[emo].counts(L)[:, k] for emo in EMO], 1)
    sns.heatmap(M, annot=False, cmap="mako_r", ax=ax, xticklabels=EMO, cbar=k == 1)
    ax.set(title=f"{kind} per layer", ylabel="layer" if k == 0 else "")
fig.suptitle("Where each emotion's circuit lives")
plt.show()
shared = C.pairwise(C.Circuit.shared_with, circuits, EMO)  # {kind: [emotion, emotion] shares in common}
chance = C.pairwise(lambda a, b: a.chance_shared_with(b, lm), circuits, EMO)  # drawn at random within layers
overlap = pd.DataFrame(sum(shared.values()), index=EMO, columns=EMO)
display(show(overlap.rename_axis("circuit").reset_index(), caption="share of components two circuits have in common"))
off = ~np.eye(len(EMO), dtype=bool)
by_kind = "; ".join(f"{kind}s {shared[kind][off].mean():.2f} (random {chance[kind][off].mean():.2f})"
                    for kind in C.KINDS)
print(f"two different emotions' circuits share {overlap.values[off].mean():.2f} of their components on average "
      f"(least {overlap.values[off].min():.2f}, most {overlap.values[off].max():.2f}); drawn at random within "
      f"layers with the same counts per layer they would share {sum(chance.values())[off].mean():.2f}. By kind, "
      f"in the same units: {by_kind}")

# %% tags=["remove-input"]
display(result(
    f"Each emotion's circuit takes {budget['n_neurons']} neurons and {budget['n_heads']} heads; two emotions' "
    f"circuits share {overlap.values[off].mean():.2f} of their components on average, against "
    f"{sum(chance.values())[off].mean():.2f} for circuits drawn at random within the same layers (neurons alone: "
    f"{shared['neuron'][off].mean():.2f} against {chance['neuron'][off].mean():.2f})."))

# %% [markdown]
# ## 6. Causal checks: the circuit against random components
#
# A ranking by contribution says who *writes* along the direction; it does
# not say that removing them matters downstream. We use held-out prompts
# (the test scenarios, built from other skeletons), each scenario asked for
# all six emotions. On them we measure each emotion's **signal** at the
# last layer: the projection on its direction when the prompt asks for it,
# minus the mean when the same scenario asks for another emotion. Knocking
# out *any* large set of components shifts every prompt's activations; the
# signal cancels such shared shifts and keeps what the direction was
# defined by.
#
# The test this chapter sets: knocking out the top k components of an
# emotion's circuit should lower that emotion's signal at least 3x more
# than knocking out k random components of the same layers. We knock out
# the **top k** of each circuit and, separately, as many random components
# of the same layers (12 draws in the default book, 16 in a FULL run). Both
# knockouts act at the last prompt position, where the components were
# scored. The top k are the highest-scoring share of the circuit's neurons
# and of its heads (`Circuit.top`): a tenth, a quarter, a half and the
# whole circuit (QUICK: a half and the whole). *Zero* ablation sets
# components to 0; *mean* ablation sets them to their mean over the
# discovery prompts, which keeps activations in range. Then we *enhance*
# the whole circuit (scale its components by 2). Effects are in units of
# the unablated signal (1 = the whole signal), with intervals over
# scenarios.

# %%
all_test = ds.load_named("sev_test")
test_recs = all_test[:: max(1, len(all_test) // size(4, 8, 16))][: size(4, 8, 16)]
tp_all = ds.sev_prompts(test_recs, emotions=EMO, valences=("neutral",))  # scenario-major, 6 emotions each
tt_all = [lm.chat_prompt(p["user"], system=p["system"]) for p in tp_all]
means = C.component_means({k: v for k, v in acts.items() if k.split(".")[0] in ("mlp_act", "attn_z")})
n_random = size(2, 12, 16)
SHARES = size((0.5, 1.0), (0.1, 0.25, 0.5, 1.0), (0.1, 0.25, 0.5, 1.0))  # top k = this share of each kind
ref_dirs = dirs[f"resid_post.{L - 1}"]
runner = causal.LastToken(lm, tt_all)  # every check acts at the last position: the prefix runs once
signal = causal.emotion_signal(lm, runner, ref_dirs)
print("unablated signal per emotion (mean over scenarios):",
      ", ".join(f"{emo} {v:.1f}" for emo, v in zip(EMO, signal.mean(0))))
rows = []
whole_by_scenario = {}  # (mode, "circuit" or "random") -> each emotion's drop per held-out scenario, whole circuit
for e, emo in enumerate(EMO):
    unit = signal[:, e].mean()
    measure = lambda ivs, e=e: causal.emotion_signal(lm, runner, ref_dirs, ivs)[:, e] / unit  # noqa: E731
    for share in SHARES:
        top_k = circuits[emo].top(share)
        for mode in ("zero", "mean"):
            res = causal.ablate(lm, top_k, measure, mode=mode, means=means, n_random=n_random, seed=SEED,
                           positions="last:1", baseline=signal[:, e] / unit)
            per_draw = res["random"].mean(1)  # each random set's mean drop over scenarios
            rows.append({"emotion": emo, "share": share, "k": len(top_k), "check": f"{mode} ablation (drop)",
                         **causal.summarise(res["circuit"], res["random"]),
                         "draw_min": per_draw.min(), "draw_max": per_draw.max()})
            if share == 1.0:
                whole_by_scenario.setdefault((mode, "circuit"), []).append(res["circuit"])
                whole_by_scenario.setdefault((mode, "random"), []).append(res["random"].mean(0))
    up = measure(C.enhance(circuits[emo], 2.0, positions="last:1")) - signal[:, e] / unit
    up_r = np.stack([measure(C.enhance(C.random_like(circuits[emo], lm, seed=SEED + r), 2.0, positions="last:1"))
                     - signal[:, e] / unit for r in range(n_random)])
    rows.append({"emotion": emo, "share": 1.0, "k": len(circuits[emo]), "check": "enhance x2 (rise)",
                 **causal.summarise(up, up_r)})
checks = pd.DataFrame(rows)
whole = checks[checks.share == 1.0]
ratios = whole.pivot(index="emotion", columns="check", values="ratio").reindex(EMO).rename_axis(columns=None)
display(show(ratios.reset_index(), digits=1, caption="whole circuit: circuit effect / random effect "
                                                     "(goal: >= 3 for ablation; inf: random effect <= 0)"))
display(show(whole, columns={"emotion": "emotion", "check": "check", "circuit": "circuit",
                             "random": "random components (mean of draws)", "draw_min": "least draw",
                             "draw_max": "most draw"}, intervals=["circuit", "random"],
             caption=f"whole circuit: effects in units of the unablated signal, with 95% intervals over "
                     f"{len(test_recs)} held-out scenarios; {n_random} random draws, the least and most of their "
                     "means"))
print("random draws that had to reuse circuit components (a layer with too few others):",
      ", ".join(f"{emo} {int(C.random_like(circuits[emo], lm, seed=SEED).meta['overlap'])}" for emo in EMO))

# %%
fig, ax = plt.subplots(figsize=(8, 3.6))
for j, mode in enumerate(("zero", "mean")):
    sub = whole[whole.check == f"{mode} ablation (drop)"].reset_index(drop=True)
    x = np.arange(len(sub)) + (j - 0.5) * 0.4
    ax.errorbar(x - 0.07, sub.circuit, [sub.circuit - sub.circuit_lo, sub.circuit_hi - sub.circuit], fmt="o",
                capsize=3, color=f"C{j}", label=f"{mode}: circuit")
    ax.errorbar(x + 0.07, sub.random, [sub.random - sub.random_lo, sub.random_hi - sub.random], fmt="x",
                capsize=3, color=f"C{j}", alpha=0.6, label=f"{mode}: random ({n_random} draws)")
ax.axhline(0, color="k", lw=0.8)
ax.set_xticks(np.arange(len(EMO)), EMO)
ax.set(ylabel="drop of the emotion signal\n(1 = all of it)", title="Knocking out the whole circuit vs random components")
ax.legend(fontsize=8, ncol=2)
plt.show()

# %% [markdown]
# The test reads "the top k components". How does the comparison change
# with k? The next two tables give the ratio for each share of the
# circuit kept, one per ablation, and the figure the two drops behind it
# (mean ablation).

# %%
abl = checks[checks.check != "enhance x2 (rise)"]
by_share = abl.pivot_table(index="emotion", columns=["share", "check"], values="ratio", dropna=False)
by_share.columns = by_share.columns.set_levels([f"top {s_:.0%}" for s_ in by_share.columns.levels[0]], level=0)
k_of = abl.groupby("share").k.first()  # every emotion's circuit has the same budget
for check in ("mean ablation (drop)", "zero ablation (drop)"):  # one table per ablation: a column per share kept
    ratio_by = by_share.reindex(EMO).xs(check, axis=1, level="check")
    ratio_by.columns = [f"{c} (k = {int(k)})" for c, k in zip(ratio_by.columns, k_of)]
    display(show(ratio_by.rename_axis("emotion").reset_index(), digits=1, caption=(
        f"{check}: circuit effect / random effect by share of the circuit kept (top k by score; goal: >= 3)")))
# an emotion passes at a share when both ablations reach 3x (a NaN ratio, no drop either way, fails)
passing = (abl.ratio.fillna(0).groupby([abl.share, abl.emotion]).min() >= 3).groupby("share").sum()
print("emotions whose zero and mean ablation both reach 3x, by share kept:",
      ", ".join(f"top {s_:.0%}: {int(n)} of {len(EMO)}" for s_, n in passing.items()))
fig, axes = plt.subplots(1, len(EMO), figsize=(11, 2.6), sharey=True)
for ax, emo in zip(axes, EMO):
    sub = abl[(abl.emotion == emo) & (abl.check == "mean ablation (drop)")]
    ax.plot(sub.share, sub.circuit, "o-", label="top k of the circuit")
    ax.plot(sub.share, sub.random, "x--", color="grey", label="k random, same layers")
    ax.set(title=emo, xlabel="share kept", xscale="log")
    ax.set_xticks(SHARES, [f"{s_:.0%}" for s_ in SHARES], fontsize=7)
    ax.minorticks_off()
    ax.axhline(0, color="k", lw=0.6)
axes[0].set(ylabel="drop (mean ablation)")
fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)
plt.show()

# %% [markdown]
# How to read the sweep on the default model. For every share kept, a
# tenth, a quarter, a half or the whole circuit, mean ablation removes at
# least 3x what as many random components of the same layers remove, for
# every emotion. Zero ablation does too for the three top shares, but not
# for the whole circuit on surprise. Zeroing all 147 of its components does
# not lower the surprise signal (a mean drop of -0.25, interval -0.91 to
# 0.48). Neither does zeroing a random set reliably (its draws range from
# -4.05 to 0.71). Setting that many components to 0 may take activations
# out of their usual range, where a change in a difference of projections
# says little. The whole circuit compares less well with its random sets
# than its top half does (all six emotions under zero ablation, five under
# mean ablation). The top half already removes nearly all the signal the
# whole circuit removes, so the lower half cannot add much, while the
# random set doubles. That does not show the lower half to be unimportant,
# only that this test cannot see it. Note also where the top of a circuit
# lies: on this model the top tenth of every circuit sits in layers 14-29
# (of 0-29), and the top quarter mostly there too. The random sets are
# drawn from the same layers, so the comparison stays fair, but
# "highest-scoring" here largely means "late".
#
# The random baseline is itself noisy. It is a mean over draws, and the
# spread of single draws (the last two columns of the effects table) can be
# wider than the effect. On `gemma3-270m` the draws decide the verdict. It
# has 18 layers of 4 heads, so a circuit of 18 heads takes one per layer
# and a random set one of the other three, besides its neurons. With the 2
# random draws this chapter used to take, the whole surprise circuit
# reached 2.0x by mean ablation. The top tenth (in an exploration with the
# same 2 draws) passed for only 1 of 6 emotions. With 12 draws the whole
# surprise circuit reaches 4.3x, and the top tenth passes for all six. That
# is why the default book now draws 12 random sets, not 2. When we ran this
# chapter with `MODEL = "gemma3-270m"` and 12 draws, every emotion reached
# 3x at the top tenth, quarter and half under both ablations. The least was
# surprise, 3.2x by mean ablation at the tenth. The whole circuit fell
# short only for surprise under zero ablation (2.4x), as on the default
# model.
#
# One caution on reading this against the test set above. The whole circuit
# was the test fixed in advance; the shares were added after it fell short
# for surprise on gemma. The tenth, quarter and half are a reading of the
# test at other k, chosen after that result. They were not tuned, and the
# table shows every share tried.

# %% [markdown]
# Does the drop in the signal show in what the model writes? We generate
# replies to the instructed held-out prompts with each circuit zeroed, with
# a random set zeroed, and unchanged. Then we ask chapter 02's emotion
# judge whether each reply reads as the instructed emotion.

# %%
judge = J.EmotionJudge(use_all=True, seed=SEED)
reporter = J.ReportingEmotionJudge(use_all=True, seed=SEED)  # reports beside the judge; never chooses
gen_n = size(2, 3, 8)
new_tokens = size(14, 24, 48)
gen_rows, users, systems, each = [], [], [], []
for emo in EMO[: size(3, 3, 6)]:
    tp = ds.sev_prompts(test_recs[:gen_n], emotions=[emo], valences=("neutral",))
    for cond, ivs in (("unchanged", []), ("circuit zeroed", C.ablation(circuits[emo], positions="last:1")),
                      ("random zeroed", C.ablation(C.random_like(circuits[emo], lm, seed=SEED), positions="last:1"))):
        gen_rows += [{"emotion": emo, "condition": cond} for _ in tp]
        users += [p["user"] for p in tp]
        systems += [p["system"] for p in tp]
        each += [ivs] * len(tp)
# one batched call: each row carries its own emotion's and condition's interventions
replies = generate(lm, users, system=systems, interventions_each=each, max_new_tokens=new_tokens, batch_size=32)
gen = pd.DataFrame(gen_rows)
gen["judged as instructed"] = [v["label"] == e for v, e in zip(judge(replies), gen.emotion)]
agg = gen.groupby("condition")["judged as instructed"].agg(list)
gen_shares = pd.DataFrame({c: dict(zip(["share", "share_lo", "share_hi"], bootstrap_ci(np.array(v, float), seed=SEED)))
                           for c, v in agg.items()}).T
display(show(gen_shares.rename_axis("condition").reset_index(),
             columns={"condition": "condition", "share": "judged as the instructed emotion"}, intervals=["share"],
             caption=f"replies judged as the instructed emotion ({len(gen) // 3} per condition, "
                     f"{gen.emotion.nunique()} emotions), with 95% intervals"))

# %% [markdown]
# Read this check for what it can show at this size. The unchanged model
# rarely writes the instructed emotion in a way the judge reads (about a
# fifth of its replies on the default model). So there is little for an
# ablation to remove, and with 9 replies per condition the intervals are
# wide. On the default model the check does not follow the signal result:
# zeroing the circuit does not lower the share (2 of 9, as for the
# unchanged model). Zeroing as many random components leaves 1 of 9 on the
# instructed emotion, which 9 replies cannot tell apart from the
# unchanged 2. (Zeroing is off the activations' usual range, and can break
# a reply outright.) The drop of the signal above is what the circuit does
# to the model's representation; whether that reaches the text is not
# something this check can show at this size.

# %% tags=["remove-input"]
drop_circuit = bootstrap_ci(np.mean(whole_by_scenario[("mean", "circuit")], 0), seed=SEED)
drop_random = bootstrap_ci(np.mean(whole_by_scenario[("mean", "random")], 0), seed=SEED)
display(result(
    f"Mean-ablating a whole circuit removes {interval(*drop_circuit)} of its emotion's held-out signal (mean over "
    f"emotions), against {interval(*drop_random)} for as many random components of the same layers; both ablations "
    f"remove at least 3x the random drop for {int(passing.loc[1.0])} of {len(EMO)} emotions (top half: "
    f"{int(passing.loc[0.5])})."))

# %% [markdown]
# ## 7. Three ways to an emotion the model was not asked for
#
# Paper B's comparison has three ways, run on prompts *without* an emotion
# instruction. (a) **Prompting** asks for the emotion in the system prompt.
# (b) **Steering vectors** add the emotion's direction to the residual
# stream of the middle third of the layers (a total of `alpha` x the
# residual RMS, split evenly over those layers). (c) **Circuit modulation**
# adds `scale x` (the emotion's group-centred mean activation) to each
# circuit neuron and head. (b) and (c) act at the last prompt position and
# every generated position. `scale` and `alpha` are each chosen on
# discovery prompts, then evaluated once on held-out prompts. The choice is
# the smallest that reaches the best judged accuracy with at least 90%
# coherent replies; if none keeps 90% coherent, it is the most accurate
# one. The default book tries scales 6-12 on 4 discovery scenarios (24
# replies per scale) and alphas 8 and 16 (what FULL runs on this model
# chose with the earlier judge). A FULL run searches scales 2-16 and alphas
# 1-16 on 6 scenarios; QUICK mode uses 8 for both. Read the coherent share
# beside the unmodified model's own.
#
# **Decoding.** Paper B's generation script decodes greedily, with a
# repetition penalty of 1.1, no 3-gram repeated and at least 10 new tokens.
# A 135M model decoded plain greedily falls into loops ("I'm so sorry to
# hear about your little ones. I'm so sorry to hear about your little ones.
# I'm"). The coherence checks rightly fail a looping reply, pushed or not;
# on the held-out prompts a quarter of the unmodified model's greedy
# replies looped. A loop says nothing about the intervention, and it hides
# what the push did. So every row here decodes greedily with a repetition
# penalty of 1.2 (`REP_PENALTY`; CTRL's rule, at the value its authors
# suggest for greedy decoding, not tuned here). A token already in the row
# has its logit shrunk before the pick. The penalty can push a model toward
# rare tokens instead, so coherence here also checks the reply's perplexity
# under the unmodified model given its prompt (chapter 02). The last two
# rows of the held-out table repeat the unmodified model and the chosen
# modulation with plain greedy decoding, so the penalty's effect is in the
# table.
#
# **Where this differs from paper B's released code**, besides the model
# and the judge:
# - its heads are pushed at *every* position of the prompt and the reply,
#   its neurons at the last one. Here both act at the last prompt position
#   and every generated one (`HEAD_POSITIONS`);
# - its decoding, above (`REP_PENALTY`, `NO_REPEAT_NGRAM`);
# - its strength is fixed per emotion in the script (0.8 for anger, 1.0 for
#   the rest, on circuits of 560 components). Here one scale for all six
#   emotions is chosen on discovery prompts, on circuits scaled to the
#   model (section 5). A second row of the held-out table gives each
#   emotion its own scale, picked by the same rule from that emotion's
#   discovery replies alone. Steering gets the same, an alpha per emotion,
#   so the comparison stays even. Those are few replies per strength (4 in
#   the default book), so a per-emotion pick is a noisy one;
# - it builds circuits from judge-accepted replies only; here from every
#   prompt (section 1).
#
# The first two are parameters of this chapter, so paper B's head
# positions and decoding (all but the 10-token minimum) can be run:
# `papermill 04_emotion_circuits.ipynb out.ipynb -p
# REP_PENALTY 1.1 -p NO_REPEAT_NGRAM 3 -p HEAD_POSITIONS all`.
#
# **Baseline:** the
# unmodified replies (how often the judge reads each emotion anyway). Paper
# B on Llama-3.2-3B-Instruct: prompting 98.96%, steering vectors 91.22%,
# circuit modulation 99.65%.

# %%
c_means = C.group_centred_means({k: v for k, v in acts.items() if k.split(".")[0] in ("mlp_act", "attn_z")},
                                labels, groups, EMO)


steer_layers = list(range(L // 3, 2 * L // 3))
DECODE = Decoding(repetition_penalty=REP_PENALTY, no_repeat_ngram_size=NO_REPEAT_NGRAM)  # every reply in this section
GREEDY = Decoding()  # plain greedy decoding, for the table's last rows
rms = {la: float(acts[f"resid_post.{la}"].pow(2).mean().sqrt()) for la in steer_layers}


def judged_by(lm, judge, reporter, texts, users, systems=None):
    """The emotion judge's label, the coherence verdict (perplexity under the unmodified model given the
    prompt included) and the reporting judge's label of each reply; each distinct (prompt, reply) is
    scored once."""
    contexts = [lm.chat_prompt(u, s) for u, s in zip(users, systems or [None] * len(users))]
    pairs = list(dict.fromkeys(zip(contexts, texts)))
    replies = [t for _, t in pairs]
    checks = coherence(replies, lm=lm, contexts=[c for c, _ in pairs])
    verdict = dict(zip(pairs, zip(judge.labels(replies), [c["coherent"] for c in checks],
                                  reporter.labels(replies))))
    labels, coherent, reported = zip(*[verdict[pair] for pair in zip(contexts, texts)])
    return list(labels), list(coherent), list(reported)


def pushed_replies(recs, scale, n_tokens, how="modulation", decode=None, circs=None, means=None, *, lm, emotions,
                   circuits, c_means, dirs, rms, steer_layers, head_positions, judged):
    """Replies to neutral-valence prompts without instruction, pushed toward each emotion in turn.

    ``how`` is "modulation" (circuits, ``scale``) or "steering" (directions,
    ``scale`` = alpha in RMS units); ``scale`` is one strength for every
    emotion or a dict {emotion: strength}. With ``scale=0`` the model is unchanged,
    so one set of replies serves as the baseline for every target emotion.
    ``decode`` is how replies are decoded, with ``n_tokens`` new tokens (``GREEDY``: plain greedy).
    ``circs`` replaces the emotions' circuits (a baseline of random components), ``means`` their group-centred
    means (section 8's variant). The keyword arguments are what the pushes are made of, and ``judged``
    reads the replies.
    """
    prompts = ds.sev_prompts(recs, emotions=None, valences=("neutral",))
    users, record_ids = [p["user"] for p in prompts], [p["record_id"] for p in prompts]
    dec = decode.replace(max_new_tokens=n_tokens)
    per = scale if isinstance(scale, dict) else dict.fromkeys(emotions, scale)  # {emotion: strength}
    if not any(per.values()):
        replies = [generate(lm, users, decoding=dec, batch_size=8)] * len(emotions)
    else:  # one batched call: each row carries its own target emotion's interventions
        push = [C.modulation((circs or circuits)[emo], c_means if means is None else means, emotions, per[emo],
                             head_positions=head_positions)
                if how == "modulation" else C.direction_steering(dirs, emotions, emo, per[emo], rms, steer_layers)
                for emo in emotions]
        replies = generate_grid(lm, users, push, decoding=dec, batch_size=32)
    df = pd.DataFrame([{"emotion": emo, "scale": per[emo], "record_id": r, "user": u, "text": t}
                       for emo, texts in zip(emotions, replies) for r, u, t in zip(record_ids, users, texts)])
    df["judged"], df["coherent"], df["reported"] = judged(df.text, df.user)
    df["hit"] = df.judged == df.emotion
    return df


judged = partial(judged_by, lm, judge, reporter)
# replies pushed toward each emotion by this chapter's circuits or directions, judged
toward = partial(pushed_replies, decode=DECODE, lm=lm, emotions=EMO, circuits=circuits, c_means=c_means, dirs=dirs,
                 rms=rms, steer_layers=steer_layers, head_positions=HEAD_POSITIONS, judged=judged)


def declared(experiment):
    """An :class:`Experiment`'s declaration as the page prints it: what is declared, and how."""
    t = experiment.table()
    return show(t.rename_axis("declared").reset_index(),
                columns={"declared": "declared", experiment.name: experiment.name})


def strengths(t):
    """A table indexed by strength (``scale``) with the strengths printed as numbers, not floats: "8", not "8.00"."""
    out = t.rename_axis("scale").reset_index().rename_axis(columns=None)
    out["scale"] = [f"{s_:g}" for s_ in out["scale"]]
    return out


def choose(toward, prompts, n_tokens, how, grid, name=None, **kw):
    """Run every strength in ``grid`` on the discovery ``prompts`` (``toward``: replies pushed toward each
    emotion); return the replies, the one strength for all emotions and the {emotion: strength} that the same
    rule picks from each emotion's own replies. ``kw`` goes to ``toward``. ``name`` captions a variant's table
    (section 8)."""
    tune = pd.concat([toward(prompts, s, n_tokens, how, **kw) for s in grid])
    table = tune.groupby("scale").agg(accuracy=("hit", "mean"), coherent=("coherent", "mean"))
    display(show(strengths(table), columns={"scale": "strength", "accuracy": "judged as the target",
                                            "coherent": "coherent"},
                 caption=f"{name or how}: choosing the scale on discovery prompts"))
    return tune, choosing.choose_strength(tune), choosing.choose_strength(tune, by="emotion")


SCALES = size((8.0,), (6.0, 8.0, 10.0, 12.0), (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0))
ALPHAS = size((8.0,), (8.0, 16.0), (1.0, 2.0, 4.0, 8.0, 16.0))
display(declared(Experiment(
    "section 7: strengths", discovery=f"sev_discovery, {size(1, 4, 6)} scenarios' neutral events, no instruction",
    candidates={"modulation scale": SCALES, "steering alpha (x RMS)": ALPHAS},
    rule="choosing.choose_strength: the smallest strength with the best share judged as the target among those "
         "keeping >= 90% of replies coherent (pooled; and per emotion)",
    test=f"sev_test, {size(2, 16, 16)} held-out scenarios' neutral events, judged once")))
tune_prompts = disc[: size(1, 4, 6)]
tunes = {}  # each method's discovery replies, kept for this section's comparisons
tunes["modulation"], scale, scale_by = choose(toward, tune_prompts, new_tokens, "modulation", SCALES)
tunes["steering"], alpha, alpha_by = choose(toward, tune_prompts, new_tokens, "steering", ALPHAS)
tuned = {how: t.groupby("scale").agg(accuracy=("hit", "mean"), coherent=("coherent", "mean"))
         for how, t in tunes.items()}
print(f"chosen: modulation scale {scale}, steering alpha {alpha} x RMS over layers "
      f"{steer_layers[0]}-{steer_layers[-1]}")
per_emotion = pd.concat({how: t.groupby(["emotion", "scale"]).agg(accuracy=("hit", "mean"),
                                                                   coherent=("coherent", "mean")).unstack("scale")
                         for how, t in tunes.items()}, axis=1)
per_emotion[("modulation", "chosen", "")] = pd.Series(scale_by)
per_emotion[("steering", "chosen", "")] = pd.Series(alpha_by)
per_emotion = per_emotion[["modulation", "steering"]].rename(columns=lambda c: f"{c:g}" if isinstance(c, float) else c,
                                                            level=2)
for how in ("modulation", "steering"):  # a table per method: a row per strength, a column per emotion
    p_ = per_emotion[how].loc[EMO]
    cells = (p_["accuracy"].map("{:.2f}".format) + " / " + p_["coherent"].map("{:.2f}".format)).T
    cells.loc["chosen"] = [f"{v:g}" for v in p_[("chosen", "")]]
    display(show(cells.rename_axis("strength").reset_index().rename_axis(columns=None), caption=(
        f"{how}: each emotion's own discovery replies ({len(tunes[how]) // len(tuned[how]) // len(EMO)} per "
        "strength), share judged as the target / share coherent at each strength, and the strength the same "
        "rule picks (last row)")))

# %% [markdown]
# A stronger push buys accuracy with coherence, so two methods are
# compared fairly only at equal coherence. Every strength tried above is
# a point; for each coherence requirement, the table takes each method's
# most accurate strength that meets it (no interpolation between
# strengths). Where a row has both numbers, the methods are compared at
# equal coherence; a blank means the method never kept that many replies
# coherent.

# %%
def at_equal_coherence(tables, where):
    """Show each method's best accuracy per coherence level; print and return modulation minus steering
    at the levels both reach."""
    at = choosing.best_at_coherence(tables)
    display(show(at.reset_index().rename_axis(columns=None), caption=(
        f"best accuracy among strengths keeping at least this coherent share ({where}); -: none keeps it")))
    both = at.dropna()
    margin = both["modulation"] - both["steering"]
    print(f"coherence levels both methods reach ({where}): {len(both)}; modulation minus steering there: "
          f"min {margin.min():+.2f}, max {margin.max():+.2f}" if len(both)
          else f"no coherence level both methods reach ({where})")
    return at, margin


at_coh, gap = at_equal_coherence(tuned, "discovery prompts")
fig, ax = plt.subplots(figsize=(6, 3.4))
for k, (how, t) in enumerate(tuned.items()):
    ax.scatter(t.coherent, t.accuracy, color=f"C{k}", label=how)
    for s_, row in t.iterrows():
        ax.annotate(f"{s_:g}", (row.coherent, row.accuracy), textcoords="offset points", xytext=(4, 3), fontsize=7)
    # the best accuracy at coherence >= c, for c up to each level: a step that holds before the level
    ax.step(at_coh.index, at_coh[how], where="pre", color=f"C{k}", alpha=0.4)
ax.set(xlabel="coherent share (discovery prompts)", ylabel="judged as the target",
       title="Accuracy against coherence, every strength tried", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
ax.legend(fontsize=8)
plt.show()

# %%
n_held = size(2, 16, 16)  # scenarios spread over the test file, 6 replies each (one per target emotion)
held = all_test[:: max(1, len(all_test) // size(4, n_held, n_held))][:n_held]
mod = toward(held, scale, new_tokens)
steered = toward(held, alpha, new_tokens, "steering")
# paper B's way, a strength per emotion (its rows are the ones above wherever every emotion picked the same)
mod_by = mod if set(scale_by.values()) == {scale} else toward(held, scale_by, new_tokens)
steered_by = steered if set(alpha_by.values()) == {alpha} else toward(held, alpha_by, new_tokens, "steering")
plain = toward(held, 0.0, new_tokens)  # the unchanged model's replies, scored against every target
# the same push on as many random components of the same layers: does choosing the components matter?
random_circuits = {e: C.random_like(circuits[e], lm, seed=SEED) for e in EMO}
mod_random = toward(held, scale, new_tokens, circs=random_circuits)
mod_greedy = toward(held, scale, new_tokens, decode=GREEDY)
plain_greedy = toward(held, 0.0, new_tokens, decode=GREEDY)
tp = ds.sev_prompts(held, emotions=EMO, valences=("neutral",))
asked = generate(lm, [p["user"] for p in tp], system=[p["system"] for p in tp], decoding=DECODE,
                 max_new_tokens=new_tokens, batch_size=8)
asked_labels, asked_coh, asked_reported = judged(asked, [p["user"] for p in tp], [p["system"] for p in tp])
asked_hit = [lab == p["emotion"] for lab, p in zip(asked_labels, tp)]
asked_df = pd.DataFrame({"hit": asked_hit, "coherent": asked_coh, "text": asked, "emotion": [p["emotion"] for p in tp],
                         "judged": asked_labels, "reported": asked_reported})


def scored_runs(runs, seed):
    """One row per run (replies with ``hit``, ``coherent``, ``text``, ``emotion``, ``judged`` and ``reported``):
    its shares, with bootstrap intervals over replies; ``reported`` is the share the reporting judge reads as
    the target, ``kappa`` the two judges' agreement on these replies."""
    out = {}
    for name, df in runs.items():
        hit, coh = df.hit.to_numpy(bool), df.coherent.to_numpy(bool)
        a, c, b = (bootstrap_ci(x.astype(float), seed=seed) for x in (hit, coh, hit & coh))
        n = bootstrap_ci(names_emotion(list(df.text), list(df.emotion)).astype(float), seed=seed)
        rep = list(df.reported)
        r = bootstrap_ci((df.reported == df.emotion).to_numpy(float), seed=seed)
        out[name] = {"accuracy": a[0], "acc lo": a[1], "acc hi": a[2], "reported": r[0], "rep lo": r[1],
                     "rep hi": r[2], "kappa": J.agreement(list(df.judged), rep)["kappa"],
                     "coherent": c[0], "coh lo": c[1],
                     "coh hi": c[2], "on target and coherent": b[0], "both lo": b[1], "both hi": b[2],
                     "names the target": n[0], "names lo": n[1], "names hi": n[2]}
    return pd.DataFrame(out).T


scored = partial(scored_runs, seed=SEED)


def show_scored(t, caption):
    """A table of :func:`scored` as the page prints it: a row per run, each share with its 95% interval in one
    cell, and the judges' agreement."""
    ends = {"acc": "accuracy", "rep": "reported", "coh": "coherent", "both": "on target and coherent",
            "names": "names the target"}
    view = t.rename(columns={f"{a} {end}": f"{b}_{end}" for a, b in ends.items() for end in ("lo", "hi")})
    display(show(view.rename_axis("run").reset_index(), intervals=list(ends.values()), caption=caption, columns={
        "run": "run", "accuracy": "accuracy (judged as the target)", "reported": "reporting judge: as the target",
        "kappa": "the judges' agreement (kappa)", "coherent": "coherent",
        "on target and coherent": "on target and coherent", "names the target": "names the target"}))


def judged_as(table, caption):
    """A share table of target (rows) by judged label (columns) as a row per target: the labels the judge
    gave its replies, most frequent first, and the share of the row each took."""
    rows = [{"target": target, "judged as": ", ".join(f"{label} {v:.2f}" for label, v in
                                                      row.sort_values(ascending=False, kind="stable").items() if v > 0)}
            for target, row in table.iterrows()]
    display(show(pd.DataFrame(rows), caption=caption,
                 columns={"target": "target", "judged as": "judged as (share of the row's replies)"}))


def show_replies(df):
    """Replies with their target, the tuning judge's label and the coherence verdict."""
    display(show(df, columns={"emotion": "target", "text": "reply", "judged": "judged as", "coherent": "coherent"}))


res = scored({"circuit modulation": mod, "steering vector (directions)": steered,
              "circuit modulation, a scale per emotion": mod_by, "steering vector, an alpha per emotion": steered_by,
              "modulation of random components (same layers, same rule)": mod_random, "no intervention": plain,
              "prompting (instruction)": asked_df, "no intervention, plain greedy": plain_greedy,
              "circuit modulation, plain greedy": mod_greedy})
show_scored(res, (
    f"held-out prompts: {len(mod)} replies per row, repetition penalty {REP_PENALTY}"
    f"{f', no repeated {NO_REPEAT_NGRAM}-gram' if NO_REPEAT_NGRAM else ''} unless marked (goal: accuracy >= 0.80 "
    "with >= 0.90 coherent); paper B on Llama-3.2-3B (greedy, penalty 1.1, no repeated 3-gram): circuit 0.9965, "
    "prompting 0.9896, steering 0.9122"))
# the baseline: the unmodified model's replies are the same whatever the target, so one row
unmodified = plain[plain.emotion == EMO[0]].judged.value_counts(normalize=True)
confusion = pd.crosstab(mod.emotion, mod.judged, normalize="index")
confusion = confusion.reindex(columns=confusion.columns.union(unmodified.index), fill_value=0.0)
confusion.loc["no intervention (any target)"] = unmodified
judged_as(confusion.fillna(0.0), f"modulated replies: the labels the judge gave each target's "
                                 f"{len(mod) // len(EMO)} replies (one reply is {len(EMO) / len(mod):.2f} of a row); "
                                 "last row: the unmodified model")

# %% [markdown]
# How to read these two tables on the default model (96 held-out replies
# per row). With the penalty, the unmodified model's replies are all
# coherent, and so are nearly all modulated ones (0.97). Modulation falls
# short of the goal (0.80 on target with at least 0.90 coherent). It is
# 0.68 [0.57, 0.77] on target, an interval that stops under 0.80, and 0.65
# [0.54, 0.74] on target and coherent. The reporting judge reads 0.75
# [0.66, 0.83] on target; the two judges agree on these replies with kappa
# 0.80. Steering vectors reach 0.28 [0.20, 0.38] and prompting 0.22 [0.14,
# 0.30], against 0.15 [0.08, 0.22] for the unmodified model.
#
# The table of judged labels says where modulation falls short. Sadness,
# happiness and surprise are read as the target in all 16 replies each,
# anger in 14 of 16, disgust in 3 of 16 and fear in none. Disgust's replies
# scatter over happiness, anger and surprise (5, 4 and 4 of 16). Fear's
# modulated replies mostly read as neutral (12 of 16), where the unmodified
# model's mostly read as happiness (0.62, the last row). The push moves
# them, but not to fear. Read them (two are in the table of replies below):
# the push does reach the text, as a register rather than a feeling. On the
# default model's held-out prompts they turn to preparation and vigilance
# ("As I'm preparing to dispense medication from my cart, you're likely
# within 10 feet of the nearest location"). That is the topic of danger,
# without anyone afraid in it, and the judge rightly reads it as neutral.
# The token table at the end of this section finds the same before any
# decoding. Larger scales do not change that while they cost coherence
# overall (0.88 coherent at scale 10 and 0.79 at 12 on the discovery
# prompts, the first table of this section). Plain greedy decoding, the
# last two rows, loses about a quarter of the unmodified replies to loops,
# and more of the modulated ones. With greedy decoding, most of the
# incoherence is the decoder's, not the push's.
#
# Choosing the components matters. The same push (each emotion's
# group-centred means at the chosen scale) on as many random components of
# the same layers leaves the judged emotion at the unmodified model's
# level. On the default model that is 0.17 against 0.15; the circuits reach
# 0.68.
#
# A scale per emotion, paper B's way, does not close the gap here: its
# accuracy is one scale's, 0.68 [0.58, 0.77]. The per-emotion pick reads 4
# discovery replies per strength, so one reply decides it. It keeps 8 for
# anger, sadness and happiness. Surprise took 10, where all 4 of its
# discovery replies were on target, against 3 of 4 at 8. Fear and disgust
# took 6, the smallest scale: fear's discovery replies were on target at no
# scale, disgust's once, at 12, where half its replies were incoherent. On
# the held-out prompts (the per-scale table below) surprise is on target in
# 8 of 8 replies at both 8 and 10. Disgust is on target in 1 of 8 at both 6
# and 8, and fear in 1 of 8 at 6 against none at 8. These held-out
# comparisons are 8 replies per cell, read after the fact, not a basis for
# a choice. Pooling the six emotions' replies, as the one-scale rule does,
# makes the steadier choice at this sample size. A per-emotion pick would
# need more discovery prompts than this book spends. Steering given an
# alpha per emotion gains little either: 0.31 [0.22, 0.41] against 0.28
# [0.20, 0.38].
#
# The held-out table compares one chosen strength per method, and their
# coherent shares need not match. So every strength tried on the discovery
# prompts is run on the first 8 held-out scenarios too (48 replies per
# strength; FULL: all 16). The equal-coherence table is built again from
# those replies. Each level still takes the best of a few strengths, for
# both methods alike.

# %%
n_eq = size(2, 8, 16)  # held-out scenarios for the every-strength re-run (the first ones of the table's)
eq_users = {p["user"] for p in ds.sev_prompts(held[:n_eq], emotions=None, valences=("neutral",))}
held_runs = {"modulation": {scale: mod[mod.user.isin(eq_users)]},
             "steering": {alpha: steered[steered.user.isin(eq_users)]}}
for how, t in tuned.items():
    for s_ in t.index:
        if s_ not in held_runs[how]:
            held_runs[how][s_] = toward(held[:n_eq], s_, new_tokens, how)
held_tuned = {how: pd.concat(runs.values()).groupby("scale").agg(accuracy=("hit", "mean"),
                                                                  coherent=("coherent", "mean"))
              for how, runs in held_runs.items()}
held_at_coh, held_gap = at_equal_coherence(held_tuned, f"held-out prompts, {len(held_runs['modulation'][scale])} "
                                                        "replies per strength")
per_scale = pd.concat(held_runs["modulation"].values()).groupby(["scale", "emotion"]).hit.mean().unstack()
display(show(strengths(per_scale.reindex(columns=EMO)), caption="modulation on these held-out prompts: share judged "
                                                                "as the target, per scale (rows) and target emotion "
                                                                "(columns)"))

# %% [markdown]
# Two columns keep the accuracy honest. **On target and coherent** counts a
# reply only when both hold. **Names the target** is judge-free: the share
# of replies that contain the emotion's own word. A small model pushed
# toward an emotion tends to *say* it (the sadness replies below: "I am
# sorrowful"). The emotion judge reads the word, and the coherence checks
# catch only the replies where one word takes over. Read the replies below
# before reading the accuracy as "writes in the emotion".

# %%
show_replies(mod.groupby("emotion").head(2))

# %% [markdown]
# **What the push promotes.** A judge's label says little about how a push
# changes the text. Here is the push's first effect on the words, before
# any decoding choice. It is the change of the next-token logits at the
# last prompt position of the held-out prompts, with each emotion's circuit
# modulated at the chosen scale. Any push of this size promotes some tokens
# whatever its direction. On this model, word fragments such as " strugg"
# lead the raw shift of a push along any one token's unembedding row at the
# last layer. So each emotion's shift is shown minus the mean shift of the
# six: what that emotion's push promotes more than the others do. The
# baseline column does the same for random components of the circuits'
# layers, pushed by the same rule. This is one step of one reply; what the
# push does once the reply has begun is not in it.

# %%
first_users = [p["user"] for p in ds.sev_prompts(held, emotions=None, valences=("neutral",))]


def promoted(lm, users, circs, c_means, emotions, scale, head_positions, k=8):
    """Each emotion's top ``k`` tokens by next-token logits under its modulation, minus the six's mean (the
    unmodified model's logits cancel in that difference, so they are not computed)."""
    means = torch.stack([next_token_logits(lm, users, C.modulation(circs[e], c_means, emotions, scale,
                                                                   head_positions=head_positions))
                         for e in emotions])
    specific = means - means.mean(0)
    return {e: ", ".join(repr(lm.tokenizer.decode([int(i)])) for i in specific[j].topk(k).indices)
            for j, e in enumerate(emotions)}


display(show(pd.DataFrame({name: promoted(lm, first_users, circs, c_means, EMO, scale, HEAD_POSITIONS)
                           for name, circs in (("the emotion's circuit", circuits),
                                               ("random components, same layers (baseline)", random_circuits))})
             .rename_axis("emotion").reset_index(),
             caption=f"tokens each push promotes more than the six pushes' mean, first reply token of "
                     f"{len(first_users)} held-out prompts, scale {scale:g}"))

# %% [markdown]
# On the default model (16 held-out prompts), the circuits for anger,
# sadness, happiness and surprise promote their emotion's own words first
# (" anger", " sorrow", " happiness", " surprise" and their kin). Disgust's
# promotes a few words of its topic (" vomit", " cannib", " cirrhosis")
# among fragments. Fear's promotes no word of fear at all: "stakes",
# " duty", " stealth", " simulating", "enarios". That is the register its
# replies show, and it is there at the first token, before decoding has a
# say. At this size, what the fear circuit carries is closer to danger and
# readiness than to being afraid.
#
# The baseline column is not empty of emotion. The random components are
# pushed by the emotion's own group-centred means, which can carry some of
# the emotion wherever they are added. Half the tokens happiness's random
# push promotes are happiness words (" smiling", " smile", " joy",
# " laughing"). Anger's promotes " aggression", sadness's " sadness" and
# "alone"; fear's, surprise's and disgust's promote fragments. Yet in the
# replies the random pushes do nothing the judge can see (the held-out
# table's random-components row, 0.17, against 0.15 unmodified). So a
# first-token shift toward an emotion's words is not enough to carry a
# reply. This table cannot say why the circuits' push lasts into the reply
# and the random one does not. It shows only that the choice of components
# matters more for the reply than for its first token.

# %% tags=["remove-input"]
modulated, plain_acc = res.loc["circuit modulation"], res.loc["no intervention", "accuracy"]
display(result(
    f"Circuit modulation puts {interval(modulated['accuracy'], modulated['acc lo'], modulated['acc hi'])} of held-out "
    f"replies on target ({modulated['coherent']:.2f} coherent), an interval "
    f"{'above' if modulated['acc lo'] > plain_acc else 'that does not clear'} the unmodified model's "
    f"{plain_acc:.2f}; random components reach "
    f"{res.loc['modulation of random components (same layers, same rule)', 'accuracy']:.2f}, steering vectors "
    f"{res.loc['steering vector (directions)', 'accuracy']:.2f} and prompting "
    f"{res.loc['prompting (instruction)', 'accuracy']:.2f}. Modulation "
    f"{'meets' if modulated['accuracy'] >= 0.8 and modulated['coherent'] >= 0.9 else 'misses'} the goal (0.80 on "
    f"target with 0.90 coherent)."))

# %% [markdown]
# ## 8. A variant: circuits from text that expresses the emotion
#
# Section 7 ends on a diagnosis. Paper B's directions come from
# *instructed* prompts, read before the model writes anything, and a 135M
# model hardly follows the instruction (chapter 01). So a direction holds
# whatever "you were told to be afraid" means to this model, and for fear
# that is the topic of danger, not someone afraid in it. The variant below
# changes only where the activations come from. The model *reads* short
# replies that express each emotion, and every site is averaged over the
# reply's tokens, the positions where modulation acts. Everything after
# that is the pipeline of sections 1-5: the group-centred directions, the
# neuron and head scores, the sublayer influence, the same budget, and
# modulation by the texts' group-centred means. One scale for all emotions
# is chosen on the discovery prompts by section 7's rule and then run once
# on the same held-out prompts.
#
# **The texts** (`data/emotion_replies.jsonl`): 24 replies per emotion,
# written for this book, said to someone ("The ice is cracking under us.
# Slowly, back towards the shore."), without the emotion words the SEV
# prompts may not use either ("afraid", "gross", "sad" and their kin; the
# loader refuses them). Evaluative words such as "revolting" or "vile", in
# 7 of the disgust replies, it allows. The replies were written without
# prompts. Each is placed after one of the discovery prompts without
# instruction, and the six emotions' replies after the same prompt form a
# group, so centring removes what the prompt does. None of them is in the
# judge's corpus (`datasets.validate_all` checks it).
#
# ```{note}
# Exploratory. The variant was designed after section 7's held-out replies
# had been read, and is tested here on those same held-out prompts. So this
# section's table is not a test of a choice made before looking. Section 9
# tests the variant on fresh prompts; that is the number the results
# chapter shows.
# ```
#
# **How to read it.** This is not paper B's method, and it was built
# *after* paper B's way fell short on fear. A first try on discovery
# prompts built the directions from the judge's own training texts, and
# fear moved. These replies were then written to keep the judge's texts
# out, and not revised after any run with them. The scale grid was set in
# the same exploration on discovery prompts; the held-out prompts were not
# looked at until this section ran. The judge did not see these texts, but
# it learned from texts written to a similar brief. So a push toward
# "replies like these" is also a push toward what the judge knows. The
# random-components row, the judge-free "names the target" column and the
# replies themselves are the checks on that. The circuits' causal checks of
# section 6 were not repeated for them.

# %%
all_replies = ds.load_named("emotion_replies")
reply_recs = [r for e in EMO for r in [x for x in all_replies if x.label == e][: size(8, 24, 24)]]
contexts = [p["user"] for p in ds.sev_prompts(all_disc, emotions=None, valences=("neutral",))]
t_labels, t_groups, t_acts = emotion_acts.reply_activations(lm, reply_recs, contexts, EMO)
reads = [v["label"] for v in judge([r.text for r in reply_recs])]
print(f"{len(reply_recs)} replies ({len(reply_recs) // len(EMO)} per emotion); the judge reads "
      f"{np.mean([lab == r.label for lab, r in zip(reads, reply_recs)]):.2f} of them as their emotion (chance 1/7)")
t_dirs = emotion_acts.directions(t_acts, t_labels, t_groups, EMO)
t_neurons, t_heads = contributions.component_scores(lm, t_acts, t_dirs, t_labels, t_groups, EMO)
t_infl = influence(t_dirs)
t_circuits = C.assemble_each(lm, EMO, t_neurons, t_heads, t_infl, budget, out_dir=out_dir, suffix="_from_text")
t_means = C.group_centred_means({k: v for k, v in t_acts.items() if k.split(".")[0] in ("mlp_act", "attn_z")},
                                t_labels, t_groups, EMO)
site_cos = pd.DataFrame({emo: [float(t_dirs[f"resid_post.{l}"][e] @ dirs[f"resid_post.{l}"][e]) for l in range(L)]
                         for e, emo in enumerate(EMO)})
kept = {emo: sum(t_circuits[emo].shared_with(circuits[emo]).values()) for emo in EMO}
kept_by_chance = {emo: sum(t_circuits[emo].chance_shared_with(circuits[emo], lm).values()) for emo in EMO}
display(pd.DataFrame({"cosine with paper B's direction, mean over layers": site_cos.mean(),
                      "... at the last layer": site_cos.iloc[-1],
                      "share of components also in paper B's circuit": pd.Series(kept),
                      "... at random within layers (baseline)": kept_by_chance}).loc[EMO]
        .rename_axis("emotion").reset_index().pipe(show, caption=(
            f"the variant against paper B's way, per emotion (directions: residual stream after each layer; two "
            f"random unit directions in {lm.d_model} dimensions: |cosine| about {1 / np.sqrt(lm.d_model):.2f})")))

_, t_scale, _ = choose(toward, tune_prompts, new_tokens, "modulation",
                       size((4.0,), (2.0, 3.0, 4.0, 5.0, 6.0), (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)),
                       name="modulation, circuits from text", circs=t_circuits, means=t_means)
t_mod = toward(held, t_scale, new_tokens, circs=t_circuits, means=t_means)
t_random = {e: C.random_like(t_circuits[e], lm, seed=SEED) for e in EMO}
t_mod_random = toward(held, t_scale, new_tokens, circs=t_random, means=t_means)
t_res = scored({"circuit modulation (paper B's way, section 7)": mod,
                "circuit modulation, circuits from text": t_mod,
                "same push on random components (same layers)": t_mod_random,
                "no intervention": plain})
show_scored(t_res, (
    f"held-out prompts, {len(t_mod)} replies per row; the variant's scale {t_scale:g}, chosen on discovery prompts "
    "(goal: accuracy >= 0.80 with >= 0.90 coherent)"))
display(pd.DataFrame({"paper B's way": mod.groupby("emotion").hit.mean(),
                      "circuits from text": t_mod.groupby("emotion").hit.mean(),
                      "random components": t_mod_random.groupby("emotion").hit.mean()}).loc[EMO]
        .rename_axis("emotion").reset_index().pipe(show, caption=(
            f"share judged as the target per emotion, {len(t_mod) // len(EMO)} held-out replies each")))
judged_as(pd.crosstab(t_mod.emotion, t_mod.judged, normalize="index").reindex(EMO),
          f"the variant's modulated replies: the labels the judge gave each target's {len(t_mod) // len(EMO)} replies")
show_replies(t_mod.groupby("emotion").head(2))

# %% [markdown]
# How to read this on the default model (96 held-out replies per row). The
# judge reads 0.89 of the 144 replies as their own emotion, so the texts
# carry what they were written to carry. The two ways find partly different
# directions (cosine 0.05 to 0.21 on average over layers, 0.13 to 0.45 at
# the last layer). Their circuits differ too. The variant's shares 0.22 to
# 0.27 of its components with paper B's circuit for the same emotion.
# Circuits drawn at random within the same layers share 0.12 to 0.14. Its
# circuits are written beside paper B's, as `{emotion}_from_text.json`.
#
# By the tuning judge, the variant hardly moves fear, the emotion it was
# built for: 3 of 16 fear replies read as fear (paper B's way: none). Most
# read as neutral (9 of 16) or disgust (4). It moves disgust: 13 of 16
# replies read as disgust (paper B's way: 3 of 16). It loses surprise (2 of
# 16, against 16 of 16; 9 of its surprise replies read as happiness). It
# loses most of anger (4 of 16, against 14; its anger replies read as
# sadness, neutral or anger) and some sadness (13 of 16, against 16).
# Overall it is behind: 0.53 [0.43, 0.62] on target against 0.68 [0.57,
# 0.77]. It keeps every reply coherent (paper B's way: 0.97) at the scale
# it chose, 3, which kept every discovery reply coherent too. On target
# *and* coherent it is thus the same 0.53, against 0.65 [0.54, 0.74]. So
# it does not meet the goal either (0.80 on target with 0.90 coherent),
# and it is further from it. The reporting judge reads more of its replies
# as the target, 0.71 [0.61, 0.80] (paper B's way: 0.75). It agrees with
# the tuning judge less on them (kappa 0.49, against 0.80): on these
# replies, which seldom name the emotion, the two judges part most. The
# same push on random components stays near the unmodified model (0.19
# against 0.15).
#
# What differs most is how the replies get there. Paper B's way names the
# target emotion's own word in 0.60 of its replies; the variant in 0.01.
# This is a judge-free count of the label's stem only: "vile" or
# "revolting" would not count. In the replies shown above, the variant's
# carry the emotion, where they do, through what happens in them: fear's
# are alarms and emergencies, disgust's are food, hands and swallowing. The
# judge reads one of each pair as the target, the other fear reply as
# neutral and the other disgust reply as happiness. That is closer to
# writing *in* an emotion, and it is also the topics of the texts it was
# built from. Fear's texts are mostly physical danger, disgust's mostly
# food and dirt. Surprise's texts turn on questions ("Wait, you're telling
# me you've had a twin all this time?"), and the surprise replies shown
# keep the question marks without the surprise. A direction read from 24
# replies is a direction for those replies' topics as much as for their
# emotion. Which part of it does the work is more than this comparison can
# show.

# %% tags=["remove-input"]
from_text = t_res.loc["circuit modulation, circuits from text"]
paper_b = t_res.loc["circuit modulation (paper B's way, section 7)"]
random_acc = t_res.loc["same push on random components (same layers)", "accuracy"]
against_b = ("level with" if round(from_text["accuracy"], 2) == round(paper_b["accuracy"], 2)
             else "behind" if from_text["accuracy"] < paper_b["accuracy"] else "ahead of")
display(result(
    f"Circuits built from text put {interval(from_text['accuracy'], from_text['acc lo'], from_text['acc hi'])} of "
    f"held-out replies on target, {against_b} paper B's way ({paper_b['accuracy']:.2f}), an interval that "
    f"{'clears' if from_text['acc lo'] > random_acc else 'does not clear'} random components ({random_acc:.2f}); "
    f"they name the emotion's word in {from_text['names the target']:.2f} of replies, paper B's "
    f"way in {paper_b['names the target']:.2f}."))

# %% [markdown]
# ## 9. Choosing the way per emotion, checked on fresh prompts
#
# Sections 7 and 8 fail in different places. Paper B's circuits move anger,
# sadness, happiness and surprise but hardly fear or disgust. The circuits
# from text move disgust but lose surprise and most of anger, and move fear
# only a little more. That suggests one more method: for each emotion, take
# whichever of the two circuits does better on the *discovery* prompts,
# each way at the one scale it chose there. The choice follows the same
# rule as every strength in this chapter. It takes the more accurate of the
# two among those keeping at least 90% of the replies coherent, or the more
# accurate if neither does; paper B's way wins a tie. The pick reads 12
# discovery scenarios per emotion and way in the default book (2 in QUICK
# mode, 24 in FULL runs), more than section 7's per-emotion scales had.
#
# **Fresh prompts.** This method was designed after the held-out replies of
# sections 7 and 8 had been read, so those prompts can no longer test it.
# It is tested on 16 other test scenarios (2 in QUICK mode), halfway
# between the held-out ones in the test file, which no other section of
# this chapter uses. Paper B's way, the circuits from text and the
# unmodified model are run on them too, so every row reads the same
# prompts. (The pick then gets 48 more, below, and why.) The baseline for
# choosing components is the same push, emotion by emotion, on random
# components of the chosen circuit's layers.

# %%
WAYS = {"paper B's way": dict(scale=scale, circs=circuits, means=c_means),  # the candidates; the first wins a tie
        "circuits from text": dict(scale=t_scale, circs=t_circuits, means=t_means)}
n_pick = size(2, 12, 24)
display(declared(Experiment(
    "section 9: the way per emotion", discovery=f"sev_discovery, {n_pick} scenarios' neutral events",
    candidates={"way": tuple(WAYS)},
    rule="choosing.choose_strength(option='way'), per emotion: the more accurate way among those keeping >= 90% "
         "of that emotion's replies coherent; paper B's way on a tie",
    test=f"sev_test, {size(2, 16, 16)} scenarios no other section uses, judged once")))
pick = pd.concat([toward(disc[:n_pick], n_tokens=new_tokens, **kw).assign(way=way) for way, kw in WAYS.items()])
pick["way"] = pd.Categorical(pick.way, categories=list(WAYS), ordered=True)
way_by = choosing.choose_strength(pick, by="emotion", option="way")


def per_way(runs, caption, way_by, emotions):
    """Each emotion's share judged as the target and share coherent under each way, and the way picked."""
    t = pd.concat({way: r.groupby("emotion").agg(on_target=("hit", "mean"), coherent=("coherent", "mean"))
                   for way, r in runs.items()}, axis=1).loc[emotions]
    t[("picked", "")] = pd.Series(way_by)
    view = t.copy()
    view.columns = [f"{way}: {m.replace('_', ' ')}" if m else way for way, m in t.columns]
    display(show(view.rename_axis("emotion").reset_index(), caption=caption))


per_way({way: pick[pick.way == way] for way in WAYS},
        f"discovery prompts, {n_pick} replies per emotion and way, and the way the rule picks", way_by, EMO)

step = max(1, len(all_test) // size(4, n_held, n_held))
fresh = all_test[step // 2:: step][:n_held]  # halfway between the held-out scenarios
assert not {r.id for r in fresh} & {r.id for r in held + test_recs}, "the fresh scenarios must be unused here"
f_runs = {way: toward(fresh, n_tokens=new_tokens, **kw) for way, kw in WAYS.items()}
f_pick = pd.concat([f_runs[way_by[e]][lambda d, e=e: d.emotion == e] for e in EMO])  # each emotion: its way's
pick_scale = {e: WAYS[way_by[e]]["scale"] for e in EMO}
pick_circuits = {e: WAYS[way_by[e]]["circs"][e] for e in EMO}
pick_means = {site: torch.stack([WAYS[way_by[e]]["means"][site][i] for i, e in enumerate(EMO)]) for site in c_means}
f_random = toward(fresh, pick_scale, new_tokens, means=pick_means,
                  circs={e: C.random_like(pick_circuits[e], lm, seed=SEED) for e in EMO})
f_plain = toward(fresh, 0.0, new_tokens)
PICK = "each emotion's way, picked on discovery prompts"
f_res = scored({PICK: f_pick, **f_runs,
                "same push on random components (same layers)": f_random, "no intervention": f_plain})
show_scored(f_res, (
    f"fresh test prompts ({len(fresh)} scenarios), {len(f_pick)} replies per row (goal: accuracy >= 0.80 with "
    ">= 0.90 coherent)"))
per_way(f_runs, f"fresh prompts, {len(f_pick) // len(EMO)} replies per emotion and way, and the way picked", way_by,
        EMO)
show_replies(f_pick.groupby("emotion").head(1))

# %% [markdown]
# How to read this on the default model (96 fresh replies per row). The
# rule picks the circuits from text for fear (on target in 6 of 12
# discovery replies, against 2 of 12 for paper B's) and for disgust (8 of
# 12, against 1 of 12). It also picks them for anger: paper B's was on
# target in 11 of 12 but kept only 10 coherent; the circuits from text were
# on target in 6 of 12, all coherent. For the other three it picks paper
# B's way.
#
# On the fresh prompts the pick lands on target in 0.67 [0.57, 0.75] of the
# replies with every reply coherent, against 0.17 unmodified and 0.16 for
# the same push on random components. That is 64 of 96: the goal (0.80 with
# 0.90 coherent) needed 77. Since every reply is coherent, the joint
# measure is 0.67 too, against 0.65 for paper B's way alone and 0.51 for
# the circuits from text. The pick names the emotion's own word in 0.35 of
# its replies, between paper B's way (0.51) and the circuits from text
# (0.02). The reporting judge reads 0.89 [0.82, 0.95] of the pick's replies
# as on target, and the two judges agree on them with kappa 0.62. By the
# reporting judge's count the pick would clear 0.80. The goal is read with
# the tuning judge, the one every choice here was made with, and by its
# count the goal is missed.
#
# The fresh prompts also give both earlier ways a second sample. Paper B's
# way reaches 0.68 [0.58, 0.76] here with 0.95 coherent (0.68 on the
# held-out prompts), the circuits from text 0.51 [0.42, 0.60] with every
# reply coherent (0.53 held out). The two samples agree: no way clears the
# goal, no interval here reaches 0.80, and the pick does no better than
# paper B's way alone. The reporting judge orders them differently: the
# pick 0.89, the circuits from text 0.77, paper B's way 0.71. It agrees
# with the tuning judge least on the circuits from text (kappa 0.51,
# against 0.71 on paper B's way). Which way is best depends on the judge;
# both judges read every way far above the unmodified model (0.17 by
# either).
#
# Where the pick gives most away is anger. On these prompts paper B's way
# reads as anger in 14 of 16 replies, with 13 of 16 coherent; the circuits
# from text in 4 of 16. The rule refused paper B's way for anger because it
# kept 10 of 12 discovery replies coherent, under the 90% the rule asks of
# *each* emotion. Disgust gains from the pick (11 of 16 against 3 of 16)
# and fear hardly (3 against 2). The loss and the gains cancel, and the
# pick ends one reply behind paper B's way. The goal holds the pooled
# replies to 90% coherent. Held over the six pooled, the same rule would
# have kept anger with paper B's way. On these prompts it would have
# reached 74 of 96 on target (0.77) with 93 of 96 coherent: still short.
# That rule was not fixed before the run, so this is a reading of the
# table, not a result. What keeps every way under the goal here is not
# coherence, near 1 throughout, but fear, which neither way moves (at most
# 3 of 16 on these prompts).

# %% [markdown]
# ### Exploratory: a larger sample, added after a near miss
#
# ```{note}
# Exploratory. This sample was added after the result above had been
# read, with no stopping rule fixed in advance, so it is not a test of
# a choice made before looking. Its numbers stay in this section and out
# of the results chapter; the result of section 9 is the table above.
# ```
#
# 96 replies a row give a wide interval: the one above spans 0.18. So the
# pick runs once more, unchanged: the same ways, scales and circuits for
# each emotion, chosen above on discovery prompts. It runs on 48 further
# test scenarios that no other part of this chapter uses (1 in QUICK mode),
# spread over the rest of the test file. The unmodified model runs on the
# same prompts. This sample was added *after* the 96 replies above, read
# with the earlier judge, came out one short of the goal (76 of 96). Read
# with the current tuning judge they are 13 short, so the near miss of this
# section's title is the earlier judge's. Adding data after a near miss
# favours a crossing. So the 48 are also shown on their own, and the result
# is the pooled share of all the fresh replies, whichever way it falls.
# Only the pick and the unmodified model run on them: each emotion's row
# carries its own circuit, means and scale in one batched call.

# %%
n_more = size(1, 48, 48)
used = {r.id for r in held + test_recs + fresh}
unused = [r for r in all_test if r.id not in used]
more = [unused[i] for i in np.unique(np.linspace(0, len(unused) - 1, n_more).round().astype(int))]
assert len(more) == n_more and not {r.id for r in more} & used, "the added scenarios must be new and unused here"
m_pick = toward(more, pick_scale, new_tokens, circs=pick_circuits, means=pick_means)
m_plain = toward(more, 0.0, new_tokens)
ALL, NONE = f"the pick, all {len(fresh) + len(more)} fresh scenarios", f"no intervention, all {len(fresh) + len(more)}"
m_res = scored({ALL: pd.concat([f_pick, m_pick]), f"the pick, the first {len(fresh)} (above)": f_pick,
                f"the pick, the {len(more)} added": m_pick, NONE: pd.concat([f_plain, m_plain]),
                f"no intervention, the {len(more)} added": m_plain})
show_scored(m_res, (
    f"the pick on every fresh prompt: {len(f_pick) + len(m_pick)} replies (goal: accuracy >= 0.80 with >= 0.90 "
    "coherent)"))
display(pd.DataFrame({"first sample": f_pick.groupby("emotion").hit.sum(), "added": m_pick.groupby("emotion").hit.sum(),
                      "of": (f_pick.groupby("emotion").size() + m_pick.groupby("emotion").size()),
                      "coherent, added": m_pick.groupby("emotion").coherent.sum(),
                      "way": pd.Series(way_by)}).loc[EMO].rename_axis("emotion").reset_index().pipe(
    show, columns={"emotion": "emotion", "first sample": "on target, first sample", "added": "on target, added",
                   "of": "replies in all", "coherent, added": "coherent, added", "way": "way"},
    caption="replies judged as the target per emotion: the first sample, the added one, and how many there are in all"))

# %% [markdown]
# How to read this on the default model. Over all 64 fresh scenarios the
# pick lands on target in 0.72 [0.67, 0.76] of the replies (276 of 384),
# with every reply coherent, so 0.72 on both counts. The reporting judge
# reads 0.89 [0.86, 0.92] (kappa 0.68). The unmodified model, on the same
# prompts: 0.16. The 48 added scenarios alone, drawn after the first 16's
# result had been read, give 0.74 [0.68, 0.79] (212 of 288), every reply
# coherent, where the first 16 gave 0.67. The 48 are the one sample the
# near miss could not have shaped. No rule for when to stop adding was
# fixed in advance, and this is the only addition (80 unused test scenarios
# were not run). By the tuning judge's count the pick misses the goal (0.80
# on target with at least 0.90 coherent), pooled and in the added part
# alone. Neither interval reaches it: their upper ends, 0.76 and 0.79, are
# under the line.
#
# The share is an average over uneven emotions. Sadness and surprise are on
# target in 64 of 64 replies and happiness in 55, all three under paper B's
# way. Disgust is on target in 42, anger in 27 and fear in only 24 of 64,
# all three through the circuits from text. Anger is where the rule's
# coherence floor cost most (section 9's reading above). A reader who needs
# one emotion should read its row, not the pooled share.
#
# Paper B reports 99.65% on Llama-3.2-3B-Instruct. A 135M model gets to
# about 0.72 with the pick by the tuning judge's count (0.89 by the
# reporting judge's). Neither way alone cleared the goal on either of its
# samples; each fails on some emotion. The directions of paper B's way are
# read from instructed prompts, which a model this size hardly follows
# (chapter 01; asked for the emotion, section 7: 0.22 on target, against
# 0.15 unasked). So for fear and disgust they carry the topic more than the
# feeling (section 7). The circuits from text carry the topics of the 144
# replies they were read from (section 8). The judges, too, are this
# project's own (chapter 02), and the pick names the emotion's word in 0.41
# of its replies: some of the accuracy is the model saying the word.

# %% tags=["remove-input"]
picked, pooled = f_res.loc[PICK], m_res.loc[ALL]
display(result(
    f"The way picked per emotion (circuits from text for {sum(w == 'circuits from text' for w in way_by.values())} "
    f"of {len(EMO)}) puts {interval(picked['accuracy'], picked['acc lo'], picked['acc hi'])} of fresh replies on "
    f"target ({picked['coherent']:.2f} coherent), against "
    f"{f_res.loc['no intervention', 'accuracy']:.2f} unmodified and "
    f"{f_res.loc['same push on random components (same layers)', 'accuracy']:.2f} on random components, and "
    f"{'meets' if picked['accuracy'] >= 0.8 and picked['coherent'] >= 0.9 else 'misses'} the goal; with the added "
    f"sample, {interval(pooled['accuracy'], pooled['acc lo'], pooled['acc hi'])} of {len(f_pick) + len(m_pick)} "
    f"replies."))

# %% [markdown]
# ## 10. Looking at the neurons on real text
#
# The circuit's top neurons for happiness, on a few modulated and
# unmodulated replies: colour shows each neuron's activation per token
# (pick a neuron in the view). A circuit is read at the last prompt
# position; this view shows whether its neurons also track emotional words
# in running text or fire on something else. Special tokens (the chat
# template's markers) reach activations of hundreds where words reach a
# few. So `plots.neuron_view` shows them at 0 and clips the rest to the
# 1st-99th percentile of the words' values: the colours compare words.

# %%
emo = "happiness"
top = sorted((c for c in circuits[emo].components if c.kind == "neuron"), key=lambda c: -c.score)[:6]
sample = pd.concat([mod[mod.emotion == emo].head(2), plain[plain.emotion == emo].head(1)])
chat = [lm.chat_prompt(u) + t for u, t in zip(sample.user, sample.text)]
display(neuron_view(lm, chat, [(c.layer, c.index) for c in top]))  # its JavaScript inline: works offline

# %% tags=["remove-input"]
# where each of the view's neurons peaks (raw values; special tokens at 0), and how often the emotion's word occurs
view_tokens, view_values = neuron_token_values(lm, chat, [(c.layer, c.index) for c in top], clip_quantile=0)
words = view_values.abs().sum(1) > 0  # the texts' ordinary tokens (not the separators or the template's markers)
peaks = [view_tokens[int(i)] for i in view_values.argmax(0)]
on_word = names_emotion(peaks, [emo] * len(peaks))
word_share = names_emotion([t for t, w in zip(view_tokens, words) if w], [emo] * int(words.sum())).mean()
others = pd.Series([t for t, w in zip(peaks, on_word) if not w], dtype=object).value_counts(sort=False)
listed = ", ".join(f"`{t!r}`" + (f" ({k})" if k > 1 else "") for t, k in others.items())  # as code: no markdown
n_on = int(on_word.sum())
display(result(
    f"On these {len(chat)} prompts and replies, {n_on or 'none'} of the {emo} circuit's {len(top)} top neurons "
    f"peak on a token of {emo}'s own word ({EMOTION_STEMS[emo]}...), which makes up {word_share:.2f} of their "
    f"tokens" + ("." if not len(others) else f"; they peak on {listed}." if not n_on
                 else f"; the other {'one peaks' if others.sum() == 1 else f'{others.sum()} peak'} on {listed}.")))

# %% [markdown]
# ## Headline numbers
#
# Recorded for the regression check (`make test` compares a QUICK run with
# stored values).

# %%
zero = whole[whole.check == "zero ablation (drop)"]
mean_ab = whole[whole.check == "mean ablation (drop)"]
headline = record(
    tail_top1=tail["top 1%"].mean(), tail_top1_random=tail["top 1% (random dir)"].mean(),
    influence_attn=summary.loc["mean I (emotions)", "attn"], influence_mlp=summary.loc["mean I (emotions)", "mlp"],
    influence_random=summary.loc["mean |I| (random push)"].mean(),
    zero_drop_circuit=zero.circuit.mean(), zero_drop_random=zero.random.mean(),
    mean_drop_circuit=mean_ab.circuit.mean(), mean_drop_random=mean_ab.random.mean(),
    emotions_ratio_ge_3=passing.loc[1.0],
    emotions_ratio_ge_3_top50=passing.loc[0.5],
    **({"emotions_ratio_ge_3_top25": passing.loc[0.25]} if 0.25 in SHARES else {}),  # QUICK runs skip it
    modulation_coherent=res.loc["circuit modulation", "coherent"],
    modulation_on_target_coherent=tuple(
        res.loc["circuit modulation", ["on target and coherent", "both lo", "both hi"]]),
    modulation_names_target=res.loc["circuit modulation", "names the target"],
    modulation_greedy_coherent=res.loc["circuit modulation, plain greedy", "coherent"],
    plain_greedy_coherent=res.loc["no intervention, plain greedy", "coherent"],
    plain_coherent=res.loc["no intervention", "coherent"],
    steering_on_target_coherent=res.loc["steering vector (directions)", "on target and coherent"],
    steering_coherent=res.loc["steering vector (directions)", "coherent"], alpha=alpha,
    equal_coherence_gap_min=gap.min() if len(gap) else float("nan"), equal_coherence_levels=len(gap),
    heldout_equal_coherence_gap_min=held_gap.min() if len(held_gap) else float("nan"),
    heldout_equal_coherence_levels=len(held_gap),
    scale=scale,
    modulation_per_emotion_coherent=res.loc["circuit modulation, a scale per emotion", "coherent"],
    steering_per_emotion_coherent=res.loc["steering vector, an alpha per emotion", "coherent"],
    random_modulation_coherent=res.loc["modulation of random components (same layers, same rule)", "coherent"],
    **{f"scale_{emo}": s_ for emo, s_ in scale_by.items()}, **{f"alpha_{emo}": a_ for emo, a_ in alpha_by.items()},
    # section 8's variant: circuits from text that expresses the emotion
    text_scale=t_scale,
    text_modulation_accuracy=tuple(
        t_res.loc["circuit modulation, circuits from text", ["accuracy", "acc lo", "acc hi"]]),
    text_modulation_coherent=t_res.loc["circuit modulation, circuits from text", "coherent"],
    text_modulation_on_target_coherent=t_res.loc["circuit modulation, circuits from text", "on target and coherent"],
    text_modulation_names_target=t_res.loc["circuit modulation, circuits from text", "names the target"],
    text_random_modulation_accuracy=t_res.loc["same push on random components (same layers)", "accuracy"],
    # section 9: each emotion's way picked on discovery prompts, tested on fresh prompts
    pick_text_emotions=sum(w == "circuits from text" for w in way_by.values()),
    pick_modulation_accuracy=tuple(f_res.loc[PICK, ["accuracy", "acc lo", "acc hi"]]),
    pick_modulation_coherent=f_res.loc[PICK, "coherent"],
    pick_modulation_on_target_coherent=f_res.loc[PICK, "on target and coherent"],
    pick_modulation_names_target=f_res.loc[PICK, "names the target"],
    pick_all_accuracy=tuple(m_res.loc[ALL, ["accuracy", "acc lo", "acc hi"]]),
    pick_all_coherent=m_res.loc[ALL, "coherent"],
    pick_all_on_target_coherent=m_res.loc[ALL, "on target and coherent"],
    pick_all_names_target=m_res.loc[ALL, "names the target"],
    pick_all_plain_accuracy=m_res.loc[NONE, "accuracy"], pick_all_replies=len(f_pick) + len(m_pick),
    # the reporting judge's share on target for the headline rows, and the two judges' agreement
    **{f"{key}_report": frame.loc[row, "reported"] for key, frame, row in (
        ("modulation_accuracy", res, "circuit modulation"), ("steering_accuracy", res, "steering vector (directions)"),
        ("prompting_accuracy", res, "prompting (instruction)"), ("plain_accuracy", res, "no intervention"),
        ("random_modulation_accuracy", res, "modulation of random components (same layers, same rule)"),
        ("pick_modulation_accuracy", f_res, PICK), ("fresh_text_modulation_accuracy", f_res, "circuits from text"),
        ("fresh_plain_accuracy", f_res, "no intervention"))},
    modulation_judges_kappa=res.loc["circuit modulation", "kappa"],
    pick_judges_kappa=f_res.loc[PICK, "kappa"],
    fresh_modulation_coherent=f_res.loc["paper B's way", "coherent"],
    fresh_text_modulation_coherent=f_res.loc["circuits from text", "coherent"],
    # accuracies with their intervals over replies
    **{key: tuple(f_res.loc[row, ["accuracy", "acc lo", "acc hi"]]) for key, row in (
        ("fresh_modulation_accuracy", "paper B's way"), ("fresh_text_modulation_accuracy", "circuits from text"),
        ("pick_random_accuracy", "same push on random components (same layers)"),
        ("fresh_plain_accuracy", "no intervention"))},
    **{key: tuple(res.loc[row, ["accuracy", "acc lo", "acc hi"]]) for key, row in (
        ("modulation_accuracy", "circuit modulation"), ("steering_accuracy", "steering vector (directions)"),
        ("modulation_per_emotion_accuracy", "circuit modulation, a scale per emotion"),
        ("steering_per_emotion_accuracy", "steering vector, an alpha per emotion"),
        ("random_modulation_accuracy", "modulation of random components (same layers, same rule)"),
        ("prompting_accuracy", "prompting (instruction)"), ("plain_accuracy", "no intervention"),
        ("modulation_greedy_accuracy", "circuit modulation, plain greedy"))},
    # the whole-circuit drops' mean over emotions, with an interval over held-out scenarios
    **{f"{mode}_drop_{who}_{end}": v for (mode, who), drops in whole_by_scenario.items()
       for end, v in zip(("lo", "hi"), bootstrap_ci(np.mean(drops, 0), seed=SEED)[1:])},
)
show(pd.DataFrame({"recorded as": list(headline), "value": [f"{v:.4g}" for v in headline.values()]}))

# %% [markdown]
# ## What this shows, and what it cannot
#
# - **Attribution is not causation, so we tested it.** The contribution
#   split is exact, but it only says who writes along a direction at the
#   last prompt token. The ablation table says whether knocking those
#   components out lowers the signal more than knocking out as many random
#   ones, on held-out prompts. The generation check says whether that shows
#   in the replies. Where the ratio is near 1, the ranking picked
#   components that do not matter more than others. The ratio depends on
#   how much of the circuit is knocked out and on which random components
#   stand beside it. So the sweep shows four sizes and the baseline
#   averages 12 random draws. With one size and a few draws the verdict can
#   depend on the draws as much as on the circuit (surprise on gemma,
#   section 6).
# - **A direction is not an emotion.** Everything is measured along
#   directions computed from *instructed* prompts, so a circuit for "anger"
#   is a circuit for the model's representation of having been told to be
#   angry. Section 8's variant reads text that expresses the emotion
#   instead, which swaps one proxy for another: its directions carry the
#   topics of 144 replies one person wrote. Modulation success is read by a
#   judge trained on this project's texts (chapter 02): its errors are part
#   of the accuracy. A second judge of another kind reports beside it and
#   reads some rows quite differently (the pick on fresh prompts: 0.67 by
#   the tuning judge, 0.89 by the reporting judge).
# - **Small model, small circuits.** The budget keeps paper B's *shares* of
#   components, which for the default model means 147 components (79
#   neurons and 68 heads, against paper B's 560). Paper B's 99.65% was on a
#   3B model whose instruction following is far stronger (see the prompting
#   row). Run this chapter with a larger `MODEL` on a GPU to compare.
# - **Designs made one after another.** Each method was run once per set of
#   test prompts, but the methods were designed in turn, each after the
#   previous one's held-out replies had been read. Section 8's came after
#   section 7's, and section 8 was still tested on section 7's held-out
#   prompts (what they showed prompted its design, not its settings).
#   Section 9's came after both, so it got prompts of its own. Its second
#   reading of the two earlier ways moved them little: paper B's way 0.68
#   then 0.68, the circuits from text 0.53 then 0.51. The pick's own sample
#   was then enlarged, after its first 96 replies fell one short of the
#   goal as the earlier judge read them (13 short as the current tuning
#   judge reads them). Its settings stayed as they were, and the enlarged
#   sample is reported pooled and in its two parts.
# - **Equal coherence, a few strengths.** The comparison at equal coherence
#   covers every strength tried, on the discovery prompts and again on the
#   held-out ones (24 and 48 replies per strength in the default book),
#   without intervals. Each level takes each method's best strength, the
#   same small selection for both. A level only one method reaches is no
#   comparison. When we ran this chapter with `MODEL = "gemma3-270m"`,
#   plain greedy decoding and the earlier judge, only steering kept 0.83 of
#   held-out replies coherent. There it was no more accurate than the
#   unmodified model.
# - **Gemma-style norms.** On Gemma the post-sublayer norms are frozen for
#   the split, so a head's term is its zeroing effect only to first order.

# %% [markdown]
# ## Summary
#
# What this run found, each number beside the baseline it is read against.
# "On target" is a reply chapter 02's tuning judge reads as the target
# emotion, and a method's goal is 0.80 on target with at least 0.90
# coherent.

# %% tags=["remove-input"]
from IPython.display import Markdown

h = headline  # this run's recorded numbers (Headline numbers, above)


def recorded_ci(h, key):
    """A recorded number with its 95% interval, as "0.79 [0.71, 0.86]"."""
    return f"{h[key]:.2f} [{h[key + '_lo']:.2f}, {h[key + '_hi']:.2f}]"


def goal_word(h, key):
    """Whether a row's share on target and share coherent meet the goal (0.80 with at least 0.90)."""
    return "meets" if h[f"{key}_accuracy"] >= 0.8 and h[f"{key}_coherent"] >= 0.9 else "misses"


ci, goal = partial(recorded_ci, h), partial(goal_word, h)


findings = [
    f"The top 1% of neurons carry {h['tail_top1']:.2f} of the positive contribution along an emotion's direction "
    f"(mean over emotions), against {h['tail_top1_random']:.2f} along a random direction.",
    f"Mean-ablating an emotion's whole circuit removes {ci('mean_drop_circuit')} of its signal on held-out prompts; "
    f"as many random components of the same layers remove {ci('mean_drop_random')}.",
    f"Under zero and mean ablation both, the whole circuit removes at least 3x what random components remove for "
    f"{int(h['emotions_ratio_ge_3'])} of {len(EMO)} emotions, its top half for "
    f"{int(h['emotions_ratio_ge_3_top50'])} of {len(EMO)}.",
    f"Circuit modulation puts {ci('modulation_accuracy')} of held-out replies on target "
    f"({h['modulation_coherent']:.2f} coherent), against {h['plain_accuracy']:.2f} unmodified, "
    f"{h['random_modulation_accuracy']:.2f} for random components, {h['steering_accuracy']:.2f} for steering "
    f"vectors and {h['prompting_accuracy']:.2f} for prompting; it {goal('modulation')} the goal.",
    f"Circuits built from text that expresses each emotion put {ci('text_modulation_accuracy')} of held-out "
    f"replies on target, against {h['modulation_accuracy']:.2f} for paper B's way, and name the emotion's word in "
    f"{h['text_modulation_names_target']:.2f} of replies, against {h['modulation_names_target']:.2f}.",
    f"Each emotion's way, picked on discovery prompts, puts {ci('pick_modulation_accuracy')} of replies to fresh "
    f"prompts on target ({h['pick_modulation_coherent']:.2f} coherent), against {h['fresh_plain_accuracy']:.2f} "
    f"unmodified, and {goal('pick_modulation')} the goal; the reporting judge reads "
    f"{h['pick_modulation_accuracy_report']:.2f} of them as on target.",
]
display(Markdown("\n".join(f"- {s}" for s in findings)))

# %% [markdown]
# ### References
#
# - Paper B: *Do LLMs "Feel"? Emotion Circuits Discovery and Control*,
#   [arXiv:2510.11328](https://arxiv.org/abs/2510.11328). This chapter
#   reproduces its circuit discovery, ablation and modulation.
# - Chapter 01 of this book for the SEV prompts, chapter 02 for the emotion
#   judges and the coherence checks, chapter 03 for the context-agnostic
#   emotion directions.
