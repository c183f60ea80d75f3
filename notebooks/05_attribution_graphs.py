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
# # 05 · Attribution graphs: transcoders and the empathy circuit
#
# **Objectives.** By the end of this chapter you will
# - train a *transcoder* per layer (a wide, sparse stand-in for each MLP)
#   and judge it the way the field does: variance explained, sparsity, dead
#   features, and the next-token loss when it replaces its MLP;
# - build an *attribution graph*: the direct effect of every active feature,
#   error term and input token on every other feature and on a logit, in a
#   replacement model that reproduces the real forward pass exactly;
# - find the features that stay on at every step of every reply under
#   empathetic system prompts (paper C's "persistent" features);
# - grow a circuit from the most persistent one by top-k influence, one
#   per situation, clamp it at the prompt's final token as paper C did, and
#   judge the replies and the next token.
#
# This follows paper C (*Preliminary Investigation of Empathy Regulating
# Circuits in Language Models*), which used a published cross-layer
# transcoder for Gemma-2-2B and a Claude judge. No published transcoders
# exist for the default model, so we train them here, on this project's
# texts, on a CPU. The dictionaries are small and the corpus tiny next to
# the field's, and the chapter says what that costs. Where a published set
# fits the model, the `TRANSCODERS` parameter uses it instead.

# %% [markdown]
# ```{include} ../book/_gpu.md
# ```

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # any name from `emocircuits models`
QUICK = False  # True: fewer items, for the test suite
FULL = False  # True: the largest samples (for a GPU; hours on a CPU)
SEED = 0
# "trained": train transcoders here (offline). Or a circuit-tracer-format set, per-layer or cross-layer:
# a local folder or a hub id such as "mntss/clt-gemma-2-2b-426k" (README: which set fits which model)
TRANSCODERS = "trained"

# %%
import json
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import HTML, display
from scipy.stats import spearmanr

from emocircuits import attribution as A
from emocircuits import clamping as C
from emocircuits import datasets as ds
from emocircuits import features
from emocircuits import fidelity
from emocircuits import judges as J
from emocircuits import load_model
from emocircuits import published as P
from emocircuits import training
from emocircuits import transcoders as T
from emocircuits.records import record, sizer
from emocircuits.coherence import coherence
from emocircuits.datasets import DATA_DIR
from emocircuits.generation import generate
from emocircuits.page import result
from emocircuits.plots import plot_graph, setup_style
from emocircuits.results import PAPER_C_CLAMP
from emocircuits.stats import bootstrap_ci
from emocircuits.tables import interval, show

setup_style()
size = sizer(QUICK, FULL)  # size(quick, book, full): this run's value of a sample size
pd.set_option("display.precision", 3)
torch.manual_seed(SEED)
lm = load_model(MODEL)
L = lm.n_layers
print(lm)

# %% [markdown]
# ## 1. A corpus, and transcoders trained on it
#
# The corpus is every text of the project's data files (chapter 01), shaped
# the way the chapters show them to the model (situations and replies as
# chat turns, SEV scenarios with their events). It also holds replies the
# model writes itself to SEV scenarios. A tenth of the texts is held out
# from training; the quality numbers below use 32 of them in the default
# book (in a FULL run, all but the second slice), and the loss numbers 4
# (32). A second slice of 32 held-out texts (16 in QUICK mode), which no
# trial of the training recipe ever read, gives the clean estimate of the
# same numbers (the caveat after the quality table says why it is needed).
#
# Each transcoder reads `mlp_in` (the residual stream after the pre-MLP
# norm) and predicts `mlp_out` through a linear *skip* plus `n_features`
# features, of which the `k` largest per token stay on (top-k). Decoder
# rows have unit norm, so an activation is the length of what the feature
# writes into the residual stream. One forward pass per batch reads every
# layer's MLP at once, and the activations stream: nothing is held beyond
# the batch. Training runs in two stages over that stream. The first fifth
# of the batches (QUICK mode: 30%) fit the skip in closed form, a ridge
# regression from `mlp_in` to `mlp_out`. The features then learn, with Adam
# in steps of 128 tokens, what that linear map leaves. The learning rate
# falls linearly to zero over the last 30% of the steps (QUICK mode keeps it
# constant). In the attribution graph the skip is one more linear path, like
# attention's: a feature upstream reaches a downstream node through it
# exactly, so the graph stays exact. Training is cached under the model, the
# corpus and the settings, checkpointed, and resumes where it stopped.

# %%
prompts_c = [json.loads(x) for x in (DATA_DIR / "circuit_prompts.jsonl").read_text().splitlines() if x.strip()]
EMPATHETIC = [p["text"] for p in prompts_c if p["kind"] == "system_empathetic"]
NEUTRAL = next(p["text"] for p in prompts_c if p["kind"] == "system_neutral")
SITUATIONS = [p["text"] for p in prompts_c if p["kind"] == "situation"]
HELDOUT = [r.text for r in ds.load_named("situations_heldout")]

sev = ds.load_named("sev_discovery")
own_users = [f"{r.scenario} {r.neutral}" for r in sev[:: size(4, 2, 2)]][: size(8, 24, 80)]
own = generate(lm, own_users, max_new_tokens=size(24, 32, 48), seed=SEED, batch_size=16)
corpus = T.project_corpus(lm, replies=list(zip(own_users, own)))
perm = np.random.default_rng(SEED).permutation(len(corpus))
n_held = max(16, len(corpus) // 10)
all_held = [corpus[i] for i in perm[:n_held]]
train = [corpus[i] for i in perm[n_held:]]
TUNED_ON = 32  # the held-out texts the recipe trials measured on: the first 32 of all_held
fresh = all_held[TUNED_ON:][: size(16, 32, 32)]  # held out too, and never read by a trial
# measured: the first 24 (QUICK) or 32 held-out texts; in a FULL run every one but the fresh slice
held = [t for t in all_held[: size(24, 32, None)] if t not in fresh]
train = train[: size(150, None, None)]
n_train_tok = sum(len(lm.tokenizer.encode(t)) for t in train)
print(f"corpus: {len(corpus)} texts; training on {len(train)} texts ({n_train_tok:,} tokens), "
      f"{len(held)} held out, {len(fresh)} more held out and never read in choosing the recipe")

# %%
settings = size(training.TrainSettings(n_features=512, k=16, epochs=1, skip_fit=0.3, seed=SEED),
                training.TrainSettings(n_features=1024, k=32, epochs=1, lr_decay=0.3, seed=SEED),
                training.TrainSettings(n_features=2048, k=32, epochs=8, lr_decay=0.3, seed=SEED))
t0 = time.perf_counter()
if TRANSCODERS == "trained":
    tset = training.train(lm, train, settings, progress=False)  # (a progress bar would print into the page)
    print(f"{len(tset)} transcoders, {settings.n_features} features each, k={settings.k}: "
          f"{time.perf_counter() - t0:.0f} s (0 s when cached); {tset[0].cfg.tokens_seen:,} training tokens seen")
else:
    tset = P.load_set(lm, TRANSCODERS)
    print(P.describe(tset))

# %% [markdown]
# ### How good are they?
#
# - **Fraction of variance explained (FVE)** of `mlp_out` on held-out text,
#   beside a least-squares *linear* map from `mlp_in` to `mlp_out`. The map
#   is fitted on training texts and measured on the same held-out tokens.
#   Its FVE is how much of the MLP a dense linear stand-in with no sparsity
#   gets.
# - **L0**: features on per token (at most `k`); **dead**: features that
#   never fire on the held-out text; **dense**: features on at more than a
#   tenth of its tokens (a dictionary full of them reads like neurons, not
#   like features).
# - **Next-token loss** when one transcoder replaces its MLP (the error
#   term dropped), when all do at once, and, as the baseline, when the MLP's
#   output is zeroed instead.

# %%
# the linear map's fit sees 400 training texts (QUICK: 64), about as many as the skip fit does
q = fidelity.quality(lm, tset, held, baseline_texts=train[: size(64, 400, 400)], with_max=True, fresh_texts=fresh)
maxact = {la: row.pop("max_act") for la, row in q.items()}  # each feature's largest activation, for section 5
qual = pd.DataFrame(q).T
loss_texts = held[: size(2, 4, 32)]
losses = fidelity.splice_losses(lm, tset, loss_texts)
qual["d_loss (this transcoder)"] = [losses["each"][la] - losses["clean"] for la in qual.index]
qual["d_loss (MLP zeroed)"] = [losses["zero_mlp"][la] - losses["clean"] for la in qual.index]
display(show(qual.rename_axis("layer").reset_index(), digits=3, columns={
    "layer": "layer", "fve": "FVE", "linear_fve": "FVE, linear map", "l0": "L0 (features on per token)",
    "dead": "dead share", "dense": "dense share",
    "d_loss (this transcoder)": "loss increase, transcoder spliced in (nats)",
    "d_loss (MLP zeroed)": "loss increase, MLP zeroed (nats)"}))
fve_ci = bootstrap_ci(qual["fve"].to_numpy(), seed=SEED)
print(f"mean FVE {fve_ci[0]:.3f} [{fve_ci[1]:.3f}, {fve_ci[2]:.3f}] over layers (linear map: "
      f"{qual.linear_fve.mean():.3f}); mean L0 {qual.l0.mean():.1f}; dead {qual.dead.mean():.1%}; dense "
      f"{qual.dense.mean():.1%}")
print(f"next-token loss: clean {losses['clean']:.3f} nats, every MLP replaced {losses['all']:.3f} "
      f"(+{losses['all'] - losses['clean']:.3f}); on {len(loss_texts)} held-out texts")
fresh_ci = bootstrap_ci(qual["fresh_fve"].to_numpy(), seed=SEED)
print(f"on the {len(fresh)} held-out texts no recipe trial read: mean FVE {fresh_ci[0]:.3f} [{fresh_ci[1]:.3f}, "
      f"{fresh_ci[2]:.3f}] over layers (lowest layer {qual.fresh_fve.min():.3f}); linear map "
      f"{qual.fresh_linear_fve.mean():.3f}")

fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
axes[0].plot(qual.index, qual.fve, "o-", label="transcoder")
axes[0].plot(qual.index, qual.linear_fve, "s--", label="linear map (baseline)")
axes[0].set(xlabel="layer", ylabel="FVE of mlp_out", title="variance explained, held-out text")
axes[0].legend()
axes[1].semilogy(qual.index, qual["d_loss (this transcoder)"].clip(lower=1e-4), "o-", label="transcoder spliced in")
axes[1].semilogy(qual.index, qual["d_loss (MLP zeroed)"].clip(lower=1e-4), "s--", label="MLP zeroed (baseline)")
axes[1].set(xlabel="layer", ylabel="increase in loss (nats)", title="next-token loss, one layer at a time")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# **Read these against the run's size.** To build the whole book in about a
# quarter of an hour on 2 CPU cores, the default book trains 1,024 features
# per layer for one pass over every training text (about 75,000 tokens;
# QUICK mode: 512 features on 150 texts). It took 6 minutes on one core of
# a busy 2-core machine, once, then cached. In the default book they
# explained 0.68 of the MLPs' output variance on held-out text (mean over
# layers; lowest layer 0.53), against 0.61 for a linear map fitted on 400
# training texts. They had 18 features on per token, 18% dead and 1% dense,
# and cost +1.0 nats with every layer spliced in (clean 4.45). That is
# better than the dense stand-in, but short of what one would want to read
# features from: a third of each MLP's variance is left to the error nodes,
# and 54% of the graph's influence runs through them (section 3). Before the
# skip was fitted in closed form, the same book trained 512 features on 400
# texts and got 0.40, below the linear map, with +4.6 nats and 72% through
# error nodes. A FULL run (`FULL = True`) trains 2,048 features for eight
# passes with the learning rate decayed over the last 30%. With the earlier
# recipe (skip learned from zero) it reached a mean FVE of 0.81 [0.78,
# 0.83] on all 222 held-out texts after 49 minutes of training on 2 cores,
# against the linear map's 0.63, and cost +0.66 nats (41% of the influence
# through error nodes); it has not been re-run with the fitted skip. The
# QUICK book's dictionaries are weaker still (about 0.53, +1.8 nats): read
# its graphs as a demonstration of the method only. One caveat on all of
# these: the training recipe (the fitted skip, its ridge, steps of 128
# tokens, 1,024 features) was chosen in trials that measured FVE on these
# same held-out texts. So the FVE above is a tuned number, not a fresh
# estimate; the linear map's was not tuned. The last printed line is the
# fresh estimate: the same measurement on 32 more held-out texts that no
# trial read (16 in QUICK mode), with the same linear map beside it. The
# box below reports both. Where the two differ by more than their
# intervals, the tuned number flattered the recipe. In the default book
# they agree: 0.68 on the texts the trials read, 0.68 [0.64, 0.73] on the
# fresh ones (lowest layer 0.53), against 0.61 and 0.62 for the linear
# map. So the tuning did not inflate the number; it is simply not high
# enough.

# %% tags=["remove-input"]
linear_fve = qual.linear_fve.mean()
than_linear = "more than" if fve_ci[1] > linear_fve else "less than" if fve_ci[2] < linear_fve else "about as much as"
built = (f"{len(tset)} transcoders of {tset[0].cfg.n_features} features, trained here on {n_train_tok:,} tokens,"
         if TRANSCODERS == "trained" else f"The {len(tset)} published transcoders")
fresh_linear = qual.fresh_linear_fve.mean()
fresh_than = ("more than" if fresh_ci[1] > fresh_linear else "less than" if fresh_ci[2] < fresh_linear
              else "about as much as")
display(result(
    f"{built} explain {interval(*fve_ci)} of the MLPs' output variance on held-out text (mean over layers), "
    f"{than_linear} a linear map's {linear_fve:.2f}. On {len(fresh)} held-out texts that no choice of the training "
    f"recipe read they explain {interval(*fresh_ci)}, {fresh_than} the linear map's {fresh_linear:.2f}. Splicing "
    f"all in raises next-token loss from {losses['clean']:.2f} to {losses['all']:.2f} nats."))

# %% [markdown]
# ## 2. Replies under empathetic system prompts, and the features that persist
#
# Paper C asked Gemma-2-2B five emotionally charged situations under five
# empathetic system prompts and looked for features active at *every
# generation step of every reply*. A generation step is the position whose
# output chose the next token: the last prompt token, then each reply token
# but the last. We do the same, and compare with the replies under the
# neutral system prompt.
#
# **Baseline.** A feature chosen at random is on at a given token with
# probability about `L0 / n_features` (printed below). Staying on for
# every step of every reply (15 in the default book, 25 in paper C and a
# FULL run) by chance is then vanishingly unlikely. So what survives is
# structure, though not necessarily *empathy* structure (a feature that
# fires on every assistant turn of the chat template would survive too).
# The neutral replies tell the two apart.

# %%
new_tok = size(16, 24, 32)
emp_systems = EMPATHETIC[: size(2, 3, None)]
pairs = [(s, u) for s in emp_systems for u in SITUATIONS]
emp_prompts = [lm.chat_prompt(u, s) for s, u in pairs]
emp_ids = generate(lm, [u for _, u in pairs], system=[s for s, _ in pairs], max_new_tokens=new_tok,
                   seed=SEED, return_ids=True, batch_size=16)
neu_prompts = [lm.chat_prompt(u, NEUTRAL) for u in SITUATIONS]
neu_ids = generate(lm, SITUATIONS, system=NEUTRAL, max_new_tokens=new_tok, seed=SEED, return_ids=True)
emp_act = features.step_activity(lm, tset, emp_prompts, emp_ids)
neu_act = features.step_activity(lm, tset, neu_prompts, neu_ids)
persist = features.persistent(emp_act, threshold=1.0)
print(f"{len(pairs)} empathetic replies, {sum(map(len, emp_ids))} generation steps; "
      f"features on at every step of every reply: {len(persist)}")
rows = []
for la, a in emp_act.items():
    lo, mean, neu = a.min(0), a.mean(0), neu_act[la].mean(0)
    for f in np.nonzero(lo >= 0.5)[0]:
        rows.append({"layer": la, "feature": int(f), "min share (empathetic)": float(lo[f]),
                     "mean share (empathetic)": float(mean[f]), "mean share (neutral)": float(neu[f])})
persist_table = pd.DataFrame(rows, columns=["layer", "feature", "min share (empathetic)", "mean share (empathetic)",
                                            "mean share (neutral)"])
persist_table["empathetic - neutral"] = persist_table["mean share (empathetic)"] - persist_table["mean share (neutral)"]
persist_table = persist_table.sort_values(["min share (empathetic)", "empathetic - neutral"], ascending=False)
print(f"features on in at least half the steps of every empathetic reply: {len(persist_table)}; "
      f"chance level for one feature at one step (mean L0 / features): {qual.l0.mean() / tset[0].cfg.n_features:.3f}")
display(show(persist_table.head(12), digits=3))
print("first replies:")
for (s, u), ids in list(zip(pairs, emp_ids))[:3]:
    print(f"- {u!r} -> {lm.tokenizer.decode(ids, skip_special_tokens=True)!r}")

# %% [markdown]
# ### Feature cards
#
# Each card shows what a feature *reads*: the vocabulary tokens whose
# embedding, on the direct path through the pre-MLP norm, drives it most.
# It shows what the feature *writes*: the tokens its decoder row promotes
# and suppresses through the final norm and the unembedding. It also
# shows the held-out contexts where the feature is most active. The
# direct-path token lists ignore attention and earlier layers,
# so for late-layer features they are a weak hint.

# %%
chosen = [tuple(map(int, n)) for n in persist_table.head(3)[["layer", "feature"]].to_numpy()]
cards = features.feature_cards(lm, tset, chosen, held + [lm.chat_prompt(u) for u in SITUATIONS], top=6, contexts=3)
display(show(pd.DataFrame(cards)))

# %% [markdown]
# With the default book's small dictionaries no feature is on at every
# step of every reply. The FULL run's dictionaries find three, all in the
# last layer, and all three are on at every step of the *neutral* replies
# too. Their cards say what they are: two fire most on the newline after
# a chat-template marker, the third on hyphens, and the tokens they write
# look like noise. Persistence across prompts and steps, paper C's
# criterion, picks out format features here. The circuit below grows from
# a seed at least four layers below the top (section 4 says why); read it
# against the neutral column too.

# %% tags=["remove-input"]
step_count, chance_on = sum(map(len, emp_ids)), qual.l0.mean() / tset[0].cfg.n_features
n_half = len(persist_table)
gap_max = persist_table["empathetic - neutral"].max() if n_half else float("nan")
if not n_half:
    versus_neutral = "no feature is on at half the steps of every reply"
elif gap_max <= 0:
    versus_neutral = (f"the {n_half} features on at half or more of every reply's steps are on no more often than "
                      "in the neutral replies")
else:
    versus_neutral = (f"the {n_half} features on at half or more of every reply's steps are on in at most "
                      f"{gap_max:.2f} more of the steps than in the neutral replies")
display(result(
    f"{f'{len(persist)} features stay' if len(persist) > 1 else '1 feature stays' if persist else 'No feature stays'} "
    f"on at every one of the {step_count} generation steps of the {len(pairs)} empathetic replies (chance for one "
    f"feature at one step: {chance_on:.3f}); {versus_neutral}."))

# %% [markdown]
# ## 3. An attribution graph
#
# We take one situation under one empathetic system prompt, append the
# first reply tokens, and ask which features drove the next reply token.
# Everything in the replacement model is frozen at the real pass (attention
# patterns, norm scales) except the feature activations, error terms and
# token embeddings, so each edge is an exact linear effect. The check below
# adds up, for every node we computed a row for, all its incoming edges and
# the constant from the biases, and compares the sum with the node's real
# value. The picture keeps the nodes and edges that carry most of the
# influence on the logit (`A.prune`). Only the token positions that hold
# one are drawn, and each layer's error nodes are summed into one grey
# diamond on the right. The eight most influential features are named by
# the tokens they are most active on in held-out text.

# %%
s_idx = 1 if len(emp_systems) > 1 else 0
prompt0 = emp_prompts[s_idx * len(SITUATIONS)]
reply0 = emp_ids[s_idx * len(SITUATIONS)]
text0 = prompt0 + lm.tokenizer.decode(reply0[:6])
max_features = size(64, 128, 256)
ctx0 = A.prepare(lm, tset, text0)
graph = A.attribution_graph(lm, tset, text0, max_features=max_features, ctx=ctx0)
kept = A.prune(graph, node_threshold=0.8, edge_threshold=0.98)
print(f"{graph.n_tok} tokens, {graph.n_active} active features, rows for {len(graph.features)}; "
      f"{graph.seconds:.1f} s on {torch.get_num_threads()} threads")
print(f"target: {graph.target!r}; check: largest |sum of edges + constants - value| = "
      f"{graph.check['max_abs_error']:.2e} (values up to {graph.check['max_value']:.1f}); "
      f"replacement logit vs the model's: {graph.check['logit_vs_model']:.2e}")
share_err = graph.influence[len(graph.features):graph.token_index(0)].sum() / graph.influence.sum()
print(f"share of influence on the logit through error nodes: {share_err:.1%} "
      f"(the part of the computation the transcoders do not explain)")
top_nodes = sorted(range(len(graph.features)), key=lambda i: -graph.influence[i])[:8]
names = features.feature_labels(lm, tset, [graph.features[i][::2] for i in top_nodes], held)  # (layer, feature) pairs
plot_graph(graph, kept, labels=names)
plt.tight_layout()
plt.show()

# %% [markdown]
# The goal is a graph for a 40-token prompt in under 20 s on two cores;
# here is the same computation on the first 40 tokens of that prompt.

# %%
ids40 = lm.encode([text0])["input_ids"][0][:40]
text40 = lm.tokenizer.decode(ids40)
t0 = time.perf_counter()
g40 = A.attribution_graph(lm, tset, text40, max_features=max_features)
graph40_seconds = time.perf_counter() - t0
print(f"{g40.n_tok}-token prompt, {len(g40.features)} feature rows: {graph40_seconds:.1f} s "
      f"(check error {g40.check['max_abs_error']:.1e})")

# %% tags=["remove-input"]
display(result(
    f"The attribution graph of a {graph.n_tok}-token prompt adds up to every node's real value within "
    f"{graph.check['max_abs_error']:.0e} (values up to {graph.check['max_value']:.0f}), and a {g40.n_tok}-token "
    f"prompt's takes {graph40_seconds:.1f} s ({'within' if graph40_seconds < 20 else 'over'} the 20 s goal); error "
    f"nodes, what the transcoders miss, carry {share_err:.0%} of the influence on the target logit."))

# %% [markdown]
# ## 4. Growing a circuit from the most persistent feature
#
# Paper C seeds a circuit with the persistent feature and adds, three
# times, the top-k downstream features by influence (activation x edge
# weight) from the features added in the step before. Our seed is the most
# persistent feature (ties: the one most specific to the empathetic
# prompts) that is active in the graph's prompt and sits at least four
# layers below the top. That leaves a downstream to grow into. And on
# this model, the last layers' features that stay on everywhere are as
# active under the neutral prompt. When no feature is on at every step of
# every reply (as on the default model, section 2), the seed is the one
# on at the largest share of steps. Compare its share under the neutral
# prompt in section 2's table before reading the circuit as an empathy
# circuit.
#
# One change from "activation x edge weight": we rank a downstream feature
# by that effect *divided by its own activation* (the share of its input
# the circuit provides; above 1 when the feature's other inputs pull it
# down). On this model the last layer's features have
# activations tens of times larger than anyone else's. With raw effects
# they win every step on scale alone, and the circuit ends after one step.

# %%
TOP = max(0, L - 4)  # seeds sit below the last three layers, so the circuit has layers to grow into
K, STEPS = 5, 3
ranked = [(int(la), int(f)) for la, f in persist_table[["layer", "feature"]].to_numpy()]  # most persistent first
circuit0 = C.grow_for_prompt(lm, tset, text0, ranked, TOP, k=K, steps=STEPS, max_features=max_features, ctx=ctx0)
seed, grown = circuit0.seed, circuit0.steps
if circuit0.seeded_by == "graph":
    print("no persistent feature below the top layers is active in this prompt; seeding with the graph's top feature")
rows = []
for step, nodes in enumerate(grown):
    for la, p, f, eff in nodes:
        lens = features.token_lens(lm, tset[la], f, top=3)
        rows.append({"step": step, "node": f"L{la}/F{f}@{p}", "token": ctx0.tokens[p],
                     "share of its input from previous step": eff if step else float("nan"),
                     "writes": " ".join(repr(t) for t, _ in lens["writes"])})
growth = pd.DataFrame(rows)
display(show(growth, {"step": "step", "node": "node", "token": "token",
                     "share of its input from previous step": "effect of the step before / activation",
                     "writes": "writes"}, digits=3))
circuit_feats = circuit0.features
print(f"seed L{seed[0]}/F{seed[2]}; circuit: {len(circuit_feats)} features over layers "
      f"{sorted({la for la, _ in circuit_feats})}")

# %% tags=["remove-input"]
seed_row = persist_table[(persist_table.layer == seed[0]) & (persist_table.feature == seed[2])]
seed_about = (f", on at {seed_row['min share (empathetic)'].iloc[0]:.2f} or more of every empathetic reply's steps "
              f"and at {seed_row['mean share (neutral)'].iloc[0]:.2f} of the neutral replies' steps,"
              if len(seed_row) else " (the graph's top feature: no persistent one was active in the prompt),")
circuit_layers = sorted({la for la, _ in circuit_feats})
from_before = growth["share of its input from previous step"].dropna()  # the step before's effect / activation
over_one = int((from_before > 1).sum())
display(result(
    f"Grown from L{seed[0]}/F{seed[2]}{seed_about} the circuit has {len(circuit_feats)} features over layers "
    f"{circuit_layers[0]}-{circuit_layers[-1]}; the step before supplies a median {from_before.median():.2f} of an "
    f"added feature's activation" + (f" (more than all of it for {over_one} of {len(from_before)}: their other "
                                      "inputs pull them down)." if over_one else ".")))

# %% [markdown]
# ## 5. Clamping circuits, as paper C did
#
# Paper C grew a circuit *for each prompt*. It then answered the same
# situation under the *neutral* system prompt, with the circuit's features
# set to 1, 10, 100 or 1000 "in the final token of the current prompt".
# A Claude judge scored the replies' empathy, 1-5 (their Table 1,
# Gemma-2-2B). We do the same, with rules fixed before any clamped reply
# is read:
#
# - **Circuits.** For each evaluation situation, one circuit grown as in
#   section 4 on that situation under the second empathetic system prompt.
#   The graph's target is the first reply token, so the growth reads the
#   prompt alone.
# - **Clamps.** At the final token of the same situation under the neutral
#   system prompt, nowhere else; the reply is then decoded greedily. Our
#   features' activations live on this model's scale, so we also clamp at
#   multiples of each feature's largest activation on held-out text.
# - **Judges.** Chapter 02's tuning empathy judge (1-5) gives the numbers
#   and intervals; its reporting judge, of another kind, reads the same
#   replies beside it. Chapter 02's check says which replies are coherent.
#
# **Baselines.** The unmodified model, and for each prompt a *control*:
# as many random features of the same layers, drawn from those that fired
# on held-out text (as every circuit feature did), clamped at the same
# multiples (a FULL run also clamps it at 100). A rise the control shows
# too is a "something changed" effect, not the circuit's.
#
# **Variants.** Paper C tried a general circuit across prompts, keeping
# every feature found in any prompt (*union*) or only those in all
# (*intersection*); neither worked for them. It also kept only features
# that read as being about empathy, which did worse. Our version of that
# filter keeps the features whose top held-out contexts chapter 02's
# emotion judge reads as emotional (`C.about_feelings`, a declared rule).
# Last, the same per-prompt circuits clamped at *every* position, prompt
# and reply, as this chapter did before it followed paper C.

# %%
eval_sit = size(SITUATIONS, SITUATIONS + HELDOUT[:5], SITUATIONS + HELDOUT)
t0 = time.perf_counter()
per_prompt = [C.grow_for_prompt(lm, tset, lm.chat_prompt(u, emp_systems[s_idx]), ranked, TOP, k=K, steps=STEPS,
                                max_features=max_features) for u in eval_sit]
controls = [C.control(tset, pc.features, seed=SEED + i, max_act=maxact) for i, pc in enumerate(per_prompt)]
union_feats, inter_feats = C.union(per_prompt), C.intersection(per_prompt)
feeling = set(C.about_feelings(lm, tset, union_feats, held, J.EmotionJudge(use_all=True, seed=SEED)))
feeling_feats = [[n for n in pc.features if n in feeling] for pc in per_prompt]
sizes = [len(pc.features) for pc in per_prompt]
size_text = f"{min(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"
print(f"{len(per_prompt)} circuits in {time.perf_counter() - t0:.0f} s: {size_text} features each "
      f"(seeded by a persistent feature in {sum(pc.seeded_by == 'persistent' for pc in per_prompt)}); union "
      f"{len(union_feats)}, intersection {len(inter_feats)}; about feelings: {len(feeling)} of the union's "
      f"features, {sum(map(bool, feeling_feats))} prompts keep at least one")

conditions = {"unmodified": [[] for _ in eval_sit]}
for v in size((100,), (1, 10, 100, 1000), (1, 10, 100, 1000)):
    conditions[f"circuit = {v}"] = [C.clamps(tset, pc.features, value=v) for pc in per_prompt]
for r in size((4,), (1, 4), (1, 4)):
    conditions[f"circuit = {r}x its max"] = [C.clamps(tset, pc.features, relative=r, max_act=maxact) for pc in per_prompt]
    conditions[f"control = {r}x its max"] = [C.clamps(tset, c, relative=r, max_act=maxact) for c in controls]
if size.name == "full":
    conditions["control = 100"] = [C.clamps(tset, c, value=100) for c in controls]
conditions["union = 4x its max"] = [C.clamps(tset, union_feats, relative=4, max_act=maxact)] * len(eval_sit)
if inter_feats:
    conditions["intersection = 4x its max"] = [C.clamps(tset, inter_feats, relative=4, max_act=maxact)] * len(eval_sit)
if any(feeling_feats):  # prompts whose circuit keeps no such feature sit this one out
    conditions["feelings only = 4x its max"] = [C.clamps(tset, f, relative=4, max_act=maxact) if f else None
                                               for f in feeling_feats]
conditions["circuit = 4x its max, every position"] = [
    C.clamps(tset, pc.features, relative=4, max_act=maxact, positions="all") for pc in per_prompt]
conditions["control = 4x its max, every position"] = [
    C.clamps(tset, c, relative=4, max_act=maxact, positions="all") for c in controls]

# %% [markdown]
# Every condition's replies come from one batched call; each row carries
# its own prompt's clamps.

# %%
emp_judge = J.EmpathyJudge(use_all=True, seed=SEED)
emp_report = J.ReportingEmpathyJudge(use_all=True, seed=SEED)  # a second reading by a judge of another kind (chapter 02)
rows_in = [(name, u, ivs) for name, per in conditions.items() for u, ivs in zip(eval_sit, per) if ivs is not None]
flat = generate(lm, [u for _, u, _ in rows_in], system=NEUTRAL, interventions_each=[ivs for *_, ivs in rows_in],
                max_new_tokens=size(24, 32, 40), seed=SEED, batch_size=32)
rows = []
replies_by, tuned, reported = {}, [], []
for name in conditions:
    got = [(u, out) for (n, u, _), out in zip(rows_in, flat) if n == name]
    sits, out = [u for u, _ in got], [o for _, o in got]
    replies_by[name] = out
    scores, report = emp_judge.score(out, sits), emp_report.score(out, sits)
    tuned.append(scores)
    reported.append(report)
    coh = np.array([c["coherent"] for c in coherence(out)])
    m, lo, hi = bootstrap_ci(scores, seed=SEED)
    cm, clo, chi = bootstrap_ci(coh.astype(float), seed=SEED)
    rows.append({"condition": name, "empathy (1-5)": m, "lo": lo, "hi": hi, "reporting judge": float(report.mean()),
                 "coherent": cm, "coh lo": clo, "coh hi": chi, "n": len(out)})
clamp_table = pd.DataFrame(rows).set_index("condition")
clamp_judges_rho = spearmanr(np.concatenate(tuned), np.concatenate(reported))[0]
print(f"the two empathy judges agree on these {sum(map(len, tuned))} replies with Spearman rho {clamp_judges_rho:.2f}")
paper_c = {k if k == "unmodified" else f"circuit = {k}": v for k, v in PAPER_C_CLAMP.items()}
clamp_table["paper C (Gemma-2-2B, Claude)"] = [paper_c.get(c, np.nan) for c in clamp_table.index]
display(show(clamp_table.rename_axis("condition").reset_index().rename(columns={
    "empathy (1-5)": "empathy", "lo": "empathy_lo", "hi": "empathy_hi", "coh lo": "coherent_lo",
    "coh hi": "coherent_hi"}),
    intervals=["empathy", "coherent"], columns={
        "condition": "condition", "empathy": "empathy (1-5)", "reporting judge": "reporting judge (1-5)",
        "coherent": "coherent", "n": "replies", "paper C (Gemma-2-2B, Claude)": "paper C (Gemma-2-2B, Claude)"},
    caption="clamps at the neutral prompt's final token unless the condition says every position: judged "
            "empathy and coherent share, with 95% intervals over replies"))
for name in ("unmodified", "circuit = 4x its max", "control = 4x its max"):
    print(f"{name}: {replies_by[name][0]!r}")

# %% [markdown]
# ### What a clamp does to the next token
#
# A judge reads the whole reply; the clamp acts on one position. So we
# also look at the one prediction it moves directly: the first reply
# token, at the neutral prompt's final position. For each condition, the
# mean KL divergence of the clamped next-token distribution from the
# unmodified one (nats), and the tokens whose probability rises and falls
# most on average. The control's KL is the baseline for "how much
# does clamping that many features move anything".

# %%
neutral_texts = [lm.chat_prompt(u, NEUTRAL) for u in eval_sit]
logit_conditions = {name: per for name, per in conditions.items()
                    if name != "unmodified" and ("4x" in name or name == "circuit = 100")}
effects = C.logit_effects(lm, neutral_texts, logit_conditions, top=5)  # a prompt that sits a condition out is left out
logit_table = pd.DataFrame([
    {"condition": name, "KL from unmodified (nats)": e["kl"],
     "promoted": " ".join(repr(t) for t, _ in e["promoted"]),
     "suppressed": " ".join(repr(t) for t, _ in e["suppressed"])} for name, e in effects.items()])
display(show(logit_table, digits=3, caption="the first reply token under each clamp: mean KL over the "
                                            f"{len(eval_sit)} neutral prompts, and the tokens moved most"))
kl_circuit4, kl_control4 = effects["circuit = 4x its max"]["kl"], effects["control = 4x its max"]["kl"]

# %% [markdown]
# In the default book (10 situations, one greedy reply per condition) no
# final-token clamp lifts judged empathy clear of the unmodified model's
# 3.22 [3.04, 3.47]. The circuits at 1, 10, 1x and 4x each feature's
# maximum score 3.04 to 3.53, each interval holding 3.22 or all but
# touching it (4x: 3.53 [3.14, 4.01]). The random controls at 4x score
# the same, 3.56 [2.96, 4.20]: clamping any 16 live features that hard
# moves the replies about as much. At 100 the replies start to break (0.70
# coherent, 3.19); at 1000 most do (0.30 coherent, 3.08). Paper C's
# pattern, a dip at 1 and 10 and a peak at 100, does not appear.
#
# The variants say the same. The union of the ten circuits (128 features)
# scores 3.58 [3.04, 4.15], with 0.70 coherent; the intersection (one
# feature that every circuit holds) 3.31; the circuits kept to features
# about feelings 3.53. The rule kept 103 of the union's 128 features: on
# this emotional corpus most top contexts read as emotional, so it filters
# little. Clamped at every position instead, circuits and controls both
# fall below the unmodified model (3.03 and 2.80, with 0.70 and 0.60
# coherent).
#
# The reporting judge reads the same rows: 3.13
# unmodified, 3.68 for the circuits at 4x, 3.46 for their controls. Over
# these 140 replies the two judges' rank agreement is 0.39. Most replies
# differ from the unmodified one by a few words, and on such small
# differences the two judges often disagree. Chapter 02 measured them on
# replies that differ by level, not by a word.
#
# The next token shows the clamp does act, but not as a circuit. At 4x
# the circuits move the first reply token's distribution by 0.57 nats and
# their controls by 0.55. The tokens they promote are openings like 'I',
# 'You', 'The' and 'A' for both. The intersection's single feature moves
# it by 0.04 nats. At 100 the KL is 5.9 nats and the union of 128
# features at 4x reaches 4.8, promoting single letters. With greedy
# decoding a change that does not flip the first choice leaves the whole
# reply as it was, which is what the three replies printed above show.

# %% tags=["remove-input"]
def empathy_ci(row):
    return interval(row["empathy (1-5)"], row["lo"], row["hi"])


unmodified_row = clamp_table.loc["unmodified"]
coherent_clamps = clamp_table[clamp_table.index.str.startswith("circuit = ") & (clamp_table.coherent >= 0.9)
                              & ~clamp_table.index.str.endswith("every position")]
raised = [c.removeprefix("circuit = ").removesuffix(" its max") for c, lo in coherent_clamps.lo.items()
          if lo > unmodified_row["empathy (1-5)"]]
if coherent_clamps.empty:
    verdict = "no final-token clamp of the circuits keeps 0.90 of replies coherent"
elif raised:
    verdict = (f"of their final-token clamps that keep 0.90 of replies coherent, the {'one' if len(raised) == 1 else 'ones'} "
               f"at {', '.join(raised)} {'has its interval' if len(raised) == 1 else 'have their intervals'} wholly "
               "above the unmodified mean")
else:
    verdict = "no final-token clamp of them that keeps 0.90 of replies coherent has its interval wholly above the unmodified mean"
display(result(
    f"Clamped at the neutral prompt's final token at 4x each feature's largest activation, each situation's own "
    f"circuit ({size_text} features) scores {empathy_ci(clamp_table.loc['circuit = 4x its max'])} on "
    f"empathy, against {empathy_ci(unmodified_row)} unmodified and "
    f"{empathy_ci(clamp_table.loc['control = 4x its max'])} for as many random features; {verdict}. It moves the "
    f"first reply token's distribution by {kl_circuit4:.2f} nats (KL), the control by {kl_control4:.2f}."))

# %% [markdown]
# ## 6. A feature along a reply
#
# The seed feature's activation over the empathetic replies (circuitsvis;
# the view is self-contained, so it works offline).

# %%
import circuitsvis as cv  # noqa: E402

from emocircuits.transcoders import mlp_io

view_texts = [p + lm.tokenizer.decode(ids) for p, ids in zip(emp_prompts[:3], emp_ids[:3])]
xin, _, mask, ids = mlp_io(lm, view_texts, [seed[0]], max_length=None, input_site=tset.input_site)
tokens, values = [], []
for r in range(len(view_texts)):
    n = int(mask[r].sum())
    with torch.no_grad():
        f = tset[seed[0]].encode(xin[seed[0]][r, :n].float().cpu())[:, seed[2]]
    tokens += [lm.tokenizer.decode([int(t)]) for t in ids[r][:n]] + ["\n\n"]
    values += f.tolist() + [0.0]
view = cv.tokens.colored_tokens(tokens, values)
display(HTML(view.local_src))

# %% tags=["remove-input"]
seed_values = np.array(values)
peak = int(seed_values.argmax())
display(result(
    f"The seed feature L{seed[0]}/F{seed[2]} is on at {(seed_values > 0).sum() / (len(values) - len(view_texts)):.2f} "
    f"of the {len(values) - len(view_texts)} tokens of these {len(view_texts)} empathetic prompts and replies, "
    f"against {qual.l0.mean() / tset[0].cfg.n_features:.3f} for a feature picked at random, and peaks on "
    f"`{tokens[peak]!r}` ({seed_values[peak]:.1f})."))

# %% [markdown]
# ## Headline numbers
#
# Recorded for the regression check (`make test` compares a QUICK run with
# stored values).

# %%
final_token = ~clamp_table.index.str.endswith("every position")
best_clamp = clamp_table[clamp_table.index.str.startswith("circuit = ") & final_token]
headline = record(
    fve_mean=qual.fve.mean(), fve_min=qual.fve.min(), linear_fve_mean=qual.linear_fve.mean(),
    fve_fresh_mean=tuple(fresh_ci), fve_fresh_min=qual.fresh_fve.min(), linear_fve_fresh_mean=fresh_linear,
    l0_mean=qual.l0.mean(), dead_mean=qual.dead.mean(), dense_mean=qual.dense.mean(), loss_clean=losses["clean"],
    loss_all_spliced=losses["all"], loss_increase=losses["all"] - losses["clean"], n_persistent=len(persist),
    graph_seconds=graph.seconds, graph40_seconds=graph40_seconds, graph_check=graph.check["max_abs_error"],
    error_influence_share=share_err, circuit_size=len(circuit_feats), prompt_circuit_size=float(np.mean(sizes)),
    union_size=len(union_feats), intersection_size=len(inter_feats), kl_circuit_4x=kl_circuit4,
    kl_control_4x=kl_control4,
    empathy_unmodified=tuple(clamp_table.loc["unmodified", ["empathy (1-5)", "lo", "hi"]]),
    empathy_best_clamp=best_clamp["empathy (1-5)"].max(),
    coherent_unmodified=clamp_table.loc["unmodified", "coherent"],
    empathy_unmodified_report=clamp_table.loc["unmodified", "reporting judge"], clamp_judges_rho=clamp_judges_rho)
for name, r in clamp_table.drop(index="unmodified").iterrows():  # "control = 4x its max, every position" -> clamp_control_4x_every_...
    slug = "clamp_" + name.replace(" its max", "").replace(", every position", " every").replace(" = ", "_").replace(" ", "_")
    record(**{f"{slug}_empathy": tuple(r[["empathy (1-5)", "lo", "hi"]]), f"{slug}_empathy_report": r["reporting judge"],
              f"{slug}_coherent": r["coherent"]})
show(pd.DataFrame({"recorded as": list(headline), "value": [f"{v:.4g}" for v in headline.values()]}))

# %% [markdown]
# ## What this shows, and what it cannot
#
# - **The graph is exact about the replacement model, not about the
#   model.** Edges are exact linear effects with attention and norms frozen
#   at this prompt. The error nodes carry what the transcoders miss (see
#   their share of influence above). Where errors dominate, a clean-looking
#   feature graph is a story about a model we did not run.
# - **Small dictionaries, small corpus.** The field trains transcoders on
#   hundreds of millions of tokens; ours saw the figure printed in section 1
#   on a CPU. Dead features, low FVE in some layers and a loss increase when
#   all are spliced in are the price. Fitting the linear skip in closed form
#   first is what lifts the default book's dictionaries above a linear map
#   (0.68 against 0.61); a FULL run with the earlier recipe (49 minutes of
#   training on 2 cores) reached a mean FVE of 0.81 and +0.66 nats. That is
#   still on a corpus of 82,165 tokens, under a thousandth of what published
#   sets see. The `TRANSCODERS` parameter runs this chapter on a published set
#   in circuit-tracer's format instead, per-layer or cross-layer (paper C's
#   kind), from a folder or a hub id. It takes GemmaScope 2 for
#   `gemma3-270m`, or the Gemma-2-2B sets for a GPU run with
#   `MODEL="gemma-2-2b"`. The README's table says which set fits which
#   model.
# - **Persistence is not empathy.** A feature that is on at every step may
#   track the assistant turn, the reply's format or the topic. The neutral
#   column of the persistence table and the feature cards are how to tell;
#   the clamping control says whether pushing *any* features that hard has
#   the same effect.
# - **One training run.** Every circuit here is grown through one set of
#   transcoders. We trained them a second time, with the same seed and
#   recipe but on two CPU threads instead of one, so with float sums in
#   another order. Their FVE, L0 and losses were unchanged to three digits.
#   The clamp comparison was not: circuits at 4x scored 3.36 [3.10, 3.67]
#   against 2.94 [2.56, 3.23] for their controls, where this book's run
#   gives 3.53 against 3.56. The reporting judge did not see that gap
#   (3.13 against 3.08; the judges' rank agreement over those replies was
#   0.06). Read the clamps, either way, as one draw of the transcoders. A claim about them needs the comparison repeated over
#   several trainings.
# - **The judge.** Empathy is read by chapter 02's two empathy judges, not
#   by Claude. They are classifiers trained on this project's 1,035 graded
#   replies, one on the reply's n-grams, one on sentence embeddings. So
#   paper C's numbers and ours are on the same 1-5 scale but not the same
#   ruler.

# %% [markdown]
# ## Summary
#
# What this run found, each number beside the baseline it is read against
# (empathy is chapter 02's tuning judge's 1-5 score).

# %% tags=["remove-input"]
from IPython.display import Markdown


def ci(row):
    """A row of the clamping table: its judged empathy with its 95% interval, as "3.06 [3.00, 3.17]"."""
    return f"{row['empathy (1-5)']:.2f} [{row['lo']:.2f}, {row['hi']:.2f}]"


def joined(items):
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " and " + items[-1]


fve, lin = round(fve_ci[0], 2), round(qual.linear_fve.mean(), 2)
versus = "more than" if fve > lin else "less than" if fve < lin else "as much as"
n_steps, chance = sum(map(len, emp_ids)), qual.l0.mean() / tset[0].cfg.n_features
steps = f"every one of the {n_steps} generation steps of the {len(pairs)} empathetic replies"
if persist:
    neutral_too = sum(float(neu_act[la].mean(0)[f]) >= 0.5 for la, f, *_ in persist)
    if len(persist) > 1:
        neutral = (f"{neutral_too} of them {'is' if neutral_too == 1 else 'are'} on in at least half the neutral "
                   "replies' steps too")
    else:
        neutral = f"it is on in {'at least' if neutral_too else 'fewer than'} half the neutral replies' steps"
    persistence = (f"{len(persist)} feature{'s stay' if len(persist) > 1 else ' stays'} on at {steps} (chance for one "
                   f"feature at one step: {chance:.3f}); {neutral}.")
else:
    persistence = (f"No feature stays on at {steps}, paper C's criterion; a feature picked at random is on at one "
                   f"step with probability {chance:.3f}.")
unmod = clamp_table.loc["unmodified"]
circ4, ctrl4, circ100 = (clamp_table.loc[c] for c in ("circuit = 4x its max", "control = 4x its max", "circuit = 100"))
coherent_rows = clamp_table[clamp_table.index.str.startswith("circuit = ") & final_token & (clamp_table.coherent >= 0.9)]
labels = [c.removeprefix("circuit = ").removesuffix(" its max") for c in coherent_rows.index]
lifted = [lab for lab, lo in zip(labels, coherent_rows.lo) if lo > unmod["empathy (1-5)"]]
if labels:
    lifts = (f"Of the circuits' final-token clamps that keep at least 0.90 of replies coherent (at {joined(labels)}), "
             f"{joined(lifted) if lifted else 'none'} lift{'' if len(lifted) > 1 else 's'} judged empathy with an "
             f"interval wholly above the unmodified {unmod['empathy (1-5)']:.2f}.")
else:
    lifts = "No final-token clamp of the circuits keeps 0.90 of replies coherent."
findings = [
    f"The transcoders explain {fve_ci[0]:.2f} [{fve_ci[1]:.2f}, {fve_ci[2]:.2f}] of the MLPs' output variance on "
    f"held-out text (mean over layers), {versus} a linear map's {qual.linear_fve.mean():.2f}, and "
    f"{fresh_ci[0]:.2f} [{fresh_ci[1]:.2f}, {fresh_ci[2]:.2f}] on held-out text no choice of their recipe read "
    f"(linear map {fresh_linear:.2f}); splicing all in raises next-token loss from {losses['clean']:.2f} to "
    f"{losses['all']:.2f} nats.",
    f"The attribution graph adds up to each node's real value within {graph.check['max_abs_error']:.0e}, but "
    f"error nodes, what the transcoders miss, carry {share_err:.0%} of the influence on the target logit.",
    persistence,
    f"Clamped at the neutral prompt's final token at 4x each feature's largest activation, each situation's own "
    f"circuit scores {ci(circ4)} on empathy, against {ci(unmod)} unmodified and {ci(ctrl4)} for as many random "
    f"features; it moves the first reply token's distribution by {kl_circuit4:.2f} nats, the control by "
    f"{kl_control4:.2f}.",
    lifts,
    f"Clamped at 100, where paper C reports {PAPER_C_CLAMP['100']:.2f} against {PAPER_C_CLAMP['unmodified']:.2f} "
    f"unmodified (Gemma-2-2B, Claude judge), the circuits leave {circ100.coherent:.2f} of replies coherent and "
    f"score {circ100['empathy (1-5)']:.2f}.",
]
display(Markdown("\n".join(f"- {s}" for s in findings)))

# %% [markdown]
# ### References
#
# - Paper C: *Preliminary Investigation of Empathy Regulating Circuits in
#   Language Models* (preprint). This chapter reproduces its persistent
#   features, circuit growth and clamping.
# - Ameisen et al., 2025, [*Circuit Tracing: Revealing Computational Graphs
#   in Language Models*](https://transformer-circuits.pub/2025/attribution-graphs/methods.html):
#   transcoders, the replacement model and attribution graphs.
# - [circuit-tracer](https://github.com/safety-research/circuit-tracer): the
#   format of the published transcoder sets that the `TRANSCODERS` parameter
#   loads.
# - Chapter 02 of this book for the empathy judges and the coherence check.
