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
# # 00 · A model you can open up
#
# **Objectives.** By the end of this chapter you will
# - load a real language model that runs offline on a CPU, and know how to
#   swap in the papers' models on a GPU;
# - know the eight *sites* every later chapter reads or changes, and check one
#   of them against transformers' own output;
# - capture activations for a batch of prompts and see that emotional content
#   already separates in the residual stream, measured against a
#   shuffled-label baseline;
# - add a vector to the residual stream while the model writes, the basic move
#   behind every steering result in this book.
#
# Everything here calls `lib/emocircuits/`; the notebook is the narrative.

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
import torch
import matplotlib.pyplot as plt
from IPython.display import display

from emocircuits import load_model, capture
from emocircuits.activations import SITE_KINDS, all_layers
from emocircuits.records import sizer
from emocircuits.generation import generate, generate_grid
from emocircuits.interventions import Add
from emocircuits.models import model_table
from emocircuits.page import result
from emocircuits.plots import band, setup_style
from emocircuits.readout import centroid_separability
from emocircuits.tables import interval

setup_style()
size = sizer(QUICK, FULL)  # size(quick, book, full): this run's value of a sample size
torch.manual_seed(SEED)

# %% [markdown]
# ## The models
#
# Two models ship inside PyPI packages, so the book runs with no network:
# `smollm2-135m` (a Llama-style chat model, the default) and `gemma3-270m`
# (a Gemma-3 base model, our second architecture). The papers' models are in
# the same registry by their hub ids; on a GPU set `MODEL` to one of them.

# %%
import pandas as pd

pd.DataFrame(model_table())

# %%
lm = load_model(MODEL)
lm

# %% [markdown]
# ## Where we look: sites
#
# Every activation in this book is named `"{kind}.{layer}"`. Inside decoder
# block `L` the residual stream `resid_pre.L` passes attention, which writes
# `attn_out.L` (computed from the per-head values `attn_z.L`), giving
# `resid_mid.L`; then the MLP, whose neurons' activations are `mlp_act.L`,
# writes `mlp_out.L`, giving `resid_post.L`. In Gemma-style blocks `attn_out`
# and `mlp_out` are taken *after* the extra normalisation that Gemma applies
# before each residual add. That way `resid_mid = resid_pre + attn_out` and
# `resid_post = resid_mid + mlp_out` hold for both architectures.

# %%
pd.DataFrame({"site": [f"{k}.L" for k in SITE_KINDS],
              "width": [lm.d_model, f"{lm.n_heads} heads x {lm.head_dim}", lm.d_model, lm.d_model,
                        lm.d_model, lm.d_mlp, lm.d_model, lm.d_model]})

# %% [markdown]
# Papers index layers differently. Here layer `L` is `model.layers[L]`, and
# `resid_post.L` is transformers' `hidden_states[L + 1]`, except for the last
# layer, where transformers stores the stream *after* the final norm. We check
# that on the model itself:

# %%
probe_texts = ["I finally got the job I wanted!", "The train was late again this morning."]
enc = lm.encode(probe_texts)
with torch.inference_mode():
    ref = lm.hf(**enc, output_hidden_states=True).hidden_states
ours = capture(lm, probe_texts, all_layers("resid_post", lm.n_layers), pooling="none", progress=False)
real = enc["attention_mask"].bool()
diffs = [max((ours[f"resid_post.{L}"][r] - ref[L + 1][r][real[r]]).abs().max().item() for r in range(2))
         for L in range(lm.n_layers)]
last = lm.n_layers - 1
with torch.inference_mode():
    normed = [lm.hf.model.norm(ours[f"resid_post.{last}"][r]) for r in range(2)]
final_diff = max((normed[r] - ref[-1][r][real[r]]).abs().max().item() for r in range(2))
print(f"max |resid_post.L - hidden_states[L+1]| over layers 0..{last - 1}: {max(diffs[:-1]):.2e}")
print(f"last layer: raw {diffs[-1]:.2e}, after the final norm {final_diff:.2e}")

# %% [markdown]
# ## A first reply
#
# The same user message with and without an empathetic system prompt, greedy
# decoding so the text is reproducible:

# %%
situation = "My dog died this morning."
for system in [None, "You are a warm, caring friend who listens closely."]:
    reply = generate(lm, [situation], system=system, max_new_tokens=size(30, 48, 60))[0]
    print(f"system={system!r}\n  -> {reply}\n")

# %% [markdown]
# ## Emotion is already in the residual stream
#
# A small preview of chapter 03. We write pairs of sentences that share a
# template but describe a good or a bad event, without naming an emotion.
# We take the residual stream at each sentence's last token. Then we ask,
# layer by layer, whether the two class means tell *held-out* sentences
# apart. A nearest-class-mean classifier is fitted leaving one pair out at
# a time.
# Beside it: chance (50%) and the same procedure with the labels shuffled
# within pairs (mean and 95th percentile). The band is a bootstrap 95%
# interval over sentences.

# %%
good = ["My sister just had a healthy baby girl.", "I passed the exam I studied for all year.",
        "We won the final in the last minute.", "My best friend is coming home after two years away.",
        "The doctor said the scan is completely clear.", "They offered me the job this afternoon.",
        "Our garden is full of flowers this spring.", "My grandfather walked again after the surgery.",
        "The whole class threw me a surprise party.", "I got the scholarship for next year.",
        "My paintings sold out at the fair.", "We finally moved into our own house.",
        "The rescue team found the missing hiker alive.", "My son took his first steps today.",
        "The bakery gave us a free cake for our anniversary.", "Our team finished the project a week early."]
bad = ["My sister lost the baby last night.", "I failed the exam I studied for all year.",
       "We lost the final in the last minute.", "My best friend moved away and stopped writing.",
       "The doctor said the scan shows a tumour.", "They fired me this afternoon.",
       "The storm destroyed our whole garden.", "My grandfather never woke up after the surgery.",
       "Nobody in the class remembered my birthday.", "They cancelled my scholarship for next year.",
       "Someone slashed my paintings at the fair.", "The bank took our house.",
       "The rescue team found the missing hiker too late.", "My son was taken to hospital today.",
       "The bakery burned down on our anniversary.", "Our team was laid off a week before the deadline."]
good, bad = good[: size(8, 16, 16)], bad[: size(8, 16, 16)]
n = len(good)
labels = np.r_[np.ones(n), np.zeros(n)]
pairs = np.r_[np.arange(n), np.arange(n)]

sites = all_layers("resid_post", lm.n_layers)
acts = capture(lm, good + bad, sites, pooling="last_prompt_token", cache=True, progress=False)
sep = [centroid_separability(acts[s].numpy(), labels, pairs, n_perm=size(10, 10, 30), seed=SEED)
       for s in sites]

layers = np.arange(lm.n_layers)
fig, ax = plt.subplots()
band(ax, layers, [r.accuracy for r in sep], [r.ci_low for r in sep], [r.ci_high for r in sep],
     label="good vs bad events, held out (bootstrap 95% CI)", marker="o", ms=3)
ax.plot(layers, [r.shuffled_p95 for r in sep], "k:", lw=1, label="shuffled labels: 95th percentile")
ax.plot(layers, [r.shuffled_mean for r in sep], "k--", lw=1, label="shuffled labels: mean")
ax.axhline(0.5, color="grey", lw=0.8)
ax.set(xlabel="layer (resid_post, last token)", ylabel="held-out accuracy", ylim=(0, 1.05),
       title=f"Where valence becomes linearly readable ({lm.name})")
ax.legend(fontsize=8, loc="lower right")
plt.show()
read_layer = next((L for L, r in enumerate(sep) if r.ci_low > r.shuffled_p95), int(np.argmax([r.accuracy for r in sep])))
r = sep[read_layer]
print(f"first layer whose interval clears the shuffled baseline: {read_layer}, accuracy {r.accuracy:.2f} "
      f"(95% CI {r.ci_low:.2f}-{r.ci_high:.2f}) vs shuffled {r.shuffled_mean:.2f} (p95 {r.shuffled_p95:.2f})")

# %% tags=["remove-input"]
cleared = r.ci_low > r.shuffled_p95
display(result(
    f"At layer {read_layer}, {'the first whose interval clears' if cleared else 'the best; no layer clears'} the "
    f"shuffled baseline, a nearest-mean classifier tells good from bad events in held-out sentences at "
    f"{interval(r.accuracy, r.ci_low, r.ci_high)}, against {r.shuffled_p95:.2f} for shuffled labels (95th "
    f"percentile); the words differ as well as the valence."))

# %% [markdown]
# What this can and cannot show: the two groups differ in words as well as
# in valence (*lost*, *failed*, *tumour*). So this is an upper bound on what
# a clean emotion signal would give, from 2 x 16 sentences. Chapter 03
# controls for wording with paired scenarios, held-out splits and lexical
# ablation.
#
# ## Changing what the model writes
#
# The difference of the two class means is a direction. Adding a multiple of
# it to the residual stream at every position while the model generates is
# the simplest *steering* intervention. We scale it in units of the typical
# size of the residual stream at that layer (its mean norm), as paper B
# does. We try it at the layer where valence became readable and at an
# earlier one, against the unsteered reply ($\alpha = 0$).

# %%
prompt = "Tell me about your weekend."
for layer in sorted({lm.n_layers // 4, read_layer}):
    X = acts[f"resid_post.{layer}"]
    direction = X[:n].mean(0) - X[n:].mean(0)
    direction = direction / direction.norm()
    scale = X.norm(dim=1).mean().item()
    print(f"--- layer {layer} (|resid| = {scale:.1f})")
    alphas = size([-0.3, 0.0, 0.3], [-0.3, -0.15, 0.0, 0.15, 0.3], [-0.3, -0.15, 0.0, 0.15, 0.3])
    # one call for every alpha: each row of the batch gets its own intervention
    texts = generate_grid(lm, [prompt], [[Add(f"resid_post.{layer}", direction, alpha=a * scale)] for a in alphas],
                          max_new_tokens=size(16, 16, 32))
    for alpha, (text,) in zip(alphas, texts):
        print(f"alpha = {alpha:+.2f}: {text}")

# %% [markdown]
# With $\alpha = 0$ the intervention is a no-op and the reply is exactly the
# unsteered one (the tests check this token for token). Whether the other
# replies are *more positive* is a claim this chapter does not test: a few
# greedy replies to one prompt are anecdotes. Testing it
# needs a judge with a measured accuracy (chapter 02) and many prompts and
# seeds (chapter 06).
#
# ## Summary
#
# - `load_model(name)` gives one object for both bundled architectures and the
#   papers' hub models: `lm.nn` (nnsight), `lm.tokenizer`, `lm.chat_prompt`,
#   `lm.layer(L)`, `lm.down_proj(L)`, `lm.o_proj(L)`.
# - `capture(lm, texts, sites, pooling)` reads any site for a batch;
#   `resid_post.L` matches transformers' `hidden_states[L+1]`.
# - `generate(lm, prompts, [Add(...)])` steers while generating.
#
# ### References
#
# - The three papers this book reproduces are listed, with links, on the
#   book's first page.
# - Fiotto-Kaufmann et al., *NNsight and NDIF: Democratizing Access to
#   Foundation Model Internals*, [arXiv:2407.14561](https://arxiv.org/abs/2407.14561):
#   the library every capture and intervention here runs on.
# - Allal et al., *SmolLM2: When Smol Goes Big*, [arXiv:2502.02737](https://arxiv.org/abs/2502.02737),
#   and the Gemma Team, *Gemma 3 Technical Report*, [arXiv:2503.19786](https://arxiv.org/abs/2503.19786):
#   the two bundled models.
# - Turner et al., *Steering Language Models With Activation Engineering*,
#   [arXiv:2308.10248](https://arxiv.org/abs/2308.10248): adding a direction
#   to the residual stream while the model generates.
