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
# # 06 · Steering: changing what the model expresses, measured honestly
#
# **Objectives.** By the end of this chapter you will
# - add an empathy direction to the residual stream during generation, over
#   a grid of strengths, and read dose-response curves of judged empathy
#   and of coherence;
# - use a success metric that cannot be gamed by broken or unchanged
#   replies, and see where paper A's keyword metric disagrees with it;
# - choose where and how hard to push on some situations, and confirm the
#   choice on others;
# - build a second direction from the model's own replies (Persona
#   Vectors), and push along both directions at once;
# - export a steering vector for other tools (safetensors, and llama.cpp's
#   control-vector GGUF).
#
# Chapter 03 showed that empathy is *readable* from the residual stream.
# Steering asks the causal question: if we push the residual stream along
# that direction, does the model's reply change the way the direction
# suggests? This chapter covers direction steering (paper A, Persona
# Vectors). Circuit modulation and feature clamping, the other two
# interventions the papers compare, live beside the components they need
# (chapter 04's three-way comparison and chapter 05's clamping table).
# Chapter 07 puts all three papers' numbers side by side.

# %% [markdown]
# ```{include} ../book/_gpu.md
# ```

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # any name from `emocircuits models`
QUICK = False  # True: fewer items, for the test suite
FULL = False  # True: the largest samples (for a GPU; hours on a CPU)
SEED = 0

# %%
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display
from scipy.stats import spearmanr

from emocircuits import choosing
from emocircuits import datasets as ds
from emocircuits import judges as J
from emocircuits import load_model
from emocircuits import probes as P
from emocircuits import readout
from emocircuits import steering as S
from emocircuits import vectors
from emocircuits.records import model_slug, record, sizer
from emocircuits.cache import cache_dir, stable_hash
from emocircuits.coherence import coherence, judged
from emocircuits.generation import Decoding
from emocircuits.lexical import keyword_success
from emocircuits.page import result
from emocircuits.personas import persona_activations, persona_directions, persona_replies
from emocircuits.plots import band, setup_style
from emocircuits.stats import bootstrap_ci, correlation_ci
from emocircuits.tables import interval, push_label, show

setup_style()
size = sizer(QUICK, FULL)  # size(quick, book, full): this run's value of a sample size
pd.set_option("display.max_colwidth", 90)
lm = load_model(MODEL)
print(lm)

# %% [markdown]
# ## 1. The direction, and how large a push is
#
# The direction is chapter 03's empathy probe: the normalised mean
# difference between empathic and task-focused replies, pooled over the
# reply (`mean_response`), fitted on the 35 training pairs. We fit it at a
# few candidate layers and report each layer's held-out AUROC.
#
# How far to push? A unit vector added with coefficient 20 (paper A's
# largest alpha) is negligible in one model and destructive in another. The
# reason is that residual-stream scales differ by orders of magnitude
# across models and layers. So alpha here is in units of the residual RMS
# at the layer (paper B's convention). With alpha = 1, the added vector's
# length equals the RMS of a single residual entry times one. The table
# shows why a fixed scale would mislead: the RMS jumps between layers where
# a few *massive activations* appear.

# %%
pairs = ds.load_named("eia_pairs")[:: size(2, 1, 1)]  # QUICK: every other pair
scen = {s.id: s for s in ds.load_named("eia_scenarios")}
n = lm.n_layers
CANDIDATES = [n // 6, n // 3, n // 2, (2 * n) // 3]
CANDIDATES = sorted(set(size(CANDIDATES[::2], CANDIDATES, CANDIDATES)))  # QUICK: two of them
fit = P.fit_pair_probe(lm, pairs, scen, layers=CANDIDATES, pooling="mean_response", seed=SEED)
heldout = ds.load_named("situations_heldout")  # the situations settings are chosen on (never test data)
situations = [r.text for r in heldout][: size(8, 6, 12)]
chosen_on = [r.id for r in heldout][: len(situations)]  # their record ids: best_setting refuses test records
chat_texts = [lm.chat_prompt(s) for s in situations]
rms = {l: S.residual_rms(lm, chat_texts, l) for l in CANDIDATES}
show(pd.DataFrame([{"layer": l, "probe test AUROC": round(fit.at(l).auroc, 3),
                    "residual RMS": round(rms[l], 2)} for l in CANDIDATES]))

# %% [markdown]
# Paper A's alphas multiply a unit vector. In this model's units, its
# largest push (20) is a few RMS at the early layers and a small fraction
# of one at the layers after the massive activations appear:

# %%
pd.DataFrame({f"paper A alpha {a}": {f"layer {l}": round(a / r, 2) for l, r in rms.items()} for a in (1, 5, 20)}
             ).rename_axis("in units of the residual RMS")

# %% [markdown]
# We steer at two layers, adding the vector at every position as paper A
# did. At the earliest candidate (where the probe reads empathy best in
# small models, chapter 03) we use paper A's own grid. There alpha is in
# {-20, -10, -5, -3, -1, 0, 1, 3, 5, 10, 20} times the unit vector, which
# the table above puts between a fraction of one RMS and a few. At the
# middle of the network that grid would barely touch the residual stream,
# so there alpha is in units of the residual RMS, as in paper B. (A FULL
# run sweeps both grids at both layers.)
#
# *Where* to push is a choice too. Paper B added its vector at the last
# prompt position and every generated one. Pushing the prompt's positions
# changes how the model reads the situation, not only how it answers, and
# may cost coherence. At the middle layer we also push only the generated
# tokens (`generated`: the first new token is predicted from an untouched
# prompt). We also push only the last four prompt positions plus the
# generated ones (`last:4`). Both narrower pushes use |alpha| <= 1. The
# alpha = 0 replies are the baseline of every setting at their layer.
#
# Replies are sampled at temperature 0.7, and each situation and seed draws
# the same random numbers at every alpha, layer and position (one seeded
# stream per reply, see `generation.generate`). A push too weak to change any
# token leaves the reply exactly as it was. So differences between alphas
# are the push's doing, not sampling noise; the seeds give the noise that
# the success metric below compares against.

# %%
LAYERS = size([n // 2], [CANDIDATES[0], n // 2], [CANDIDATES[0], n // 2])  # QUICK: the middle layer only
UNIT_LAYERS = size([], [CANDIDATES[0]], LAYERS)  # paper A's grid, on the unit vector
RMS_LAYERS = size([n // 2], [n // 2], LAYERS)  # paper B's scale
PAPER_A_ALPHAS = [-20, -10, -5, -3, -1, 0, 1, 3, 5, 10, 20]
ALPHAS = size([-1, 0, 1], [-2, -1, -0.5, 0, 0.5, 1, 2], [-2, -1, -0.5, 0, 0.5, 1, 2])
POSITIONS = size(["generated"], ["generated", "last:4"], ["generated", "last:4", "last:1"])
SEEDS = [SEED + i for i in range(size(1, 2, 3))]
NEW_TOKENS = size(24, 32, 40)
SAMPLED = Decoding(max_new_tokens=NEW_TOKENS, do_sample=True, temperature=0.7)  # every sweep's replies
prompts = [{"id": f"sit-{i}", "user": s} for i, s in enumerate(situations)]
settings = ([("all", "unit", UNIT_LAYERS, PAPER_A_ALPHAS)] if UNIT_LAYERS else []) + [
    ("all", "rms", RMS_LAYERS, ALPHAS)] + [(p, "rms", [n // 2], [a for a in ALPHAS if a and abs(a) <= 1])
                                           for p in POSITIONS]
records = [r for pos, scale, layers, alphas in settings
           for r in S.sweep(lm, prompts, fit.directions, layers, alphas, scale=scale, positions=pos, seeds=SEEDS,
                            decoding=SAMPLED)]
grid = pd.DataFrame(records).groupby(["layer", "positions", "scale"]).alpha.agg(["unique", "size"]).reset_index()
show(grid.assign(unique=[", ".join(f"{a:g}" for a in u) for u in grid["unique"]],
                 scale=grid.scale.map({"rms": "residual RMS", "unit": "unit vector"})),
     columns={"layer": "layer", "positions": "positions", "scale": "alpha in units of", "unique": "alphas",
              "size": "replies"})

# %% tags=["remove-input"]
box_mid = fit.at(n // 2)
display(result(
    f"The probe direction tells held-out empathic from task-focused replies apart with AUROC "
    f"{interval(box_mid.auroc, *box_mid.auroc_ci)} at layer {n // 2}, where it is pushed (chance 0.50); "
    f"paper A's largest push, 20 unit vectors, is {20 / rms[n // 2]:.2f} residual RMS there and "
    f"{20 / rms[CANDIDATES[0]]:.2f} at layer {CANDIDATES[0]}. The grid draws {len(records)} sampled replies."))

# %% [markdown]
# ## 2. Judging every reply
#
# Each reply gets chapter 02's tuning empathy score (1-5; an n-gram judge
# that reads the reply alone, not its situation). It also gets chapter 02's
# coherence checks, including perplexity under the *unsteered* model given
# the prompt. Steering can produce fluent-looking pseudo-language with a
# low perplexity (byte-level tokens of accented letters predict each
# other). The language check catches it: the judges read English only, so
# other scripts count as off-target.

# %%
emp = J.EmpathyJudge(use_all=True, seed=SEED)  # the judge the settings are chosen by
emp_report = J.ReportingEmpathyJudge(use_all=True, seed=SEED)  # reads the confirmations beside it (chapter 02); chooses nothing


# replies' empathy scores given their situations, and whether each is coherent (perplexity given its prompt)
judge = partial(judged, lm, emp.score)
# section 1's sampled sweep along a direction, read by the tuning judge: (records, scores, coherent)
judged_sweep = partial(S.judged_sweep, lm, judge=judge, decoding=SAMPLED, seeds=SEEDS)
# the reporting judge's reading of a judged sweep: the share moved both ways, and its rho with the tuning judge
reported = partial(S.second_reading, score=emp_report.score, seed=SEED)
situation_of = {p["id"]: p["user"] for p in prompts}
scores, coherent = judge([r["text"] for r in records], [situation_of[r["id"]] for r in records])
table = S.steering_success(records, scores, coherent, seed=SEED)
# every push in one unit, for the figures: paper A's unit alphas divided by the layer's RMS
table.insert(4, "alpha_rms", np.where(table.scale == "unit", table.alpha / table.layer.map(rms), table.alpha))


show(table.assign(push=[push_label(a, s_, rms[l]) for a, s_, l in zip(table.alpha, table.scale, table.layer)]),
     columns={"layer": "layer", "positions": "positions", "push": "push (alpha)",
              "score": "judged empathy [95% CI]", "coherent_share": "coherent share", "threshold": "threshold",
              "success": "honest success [95% CI]"}, intervals=["score", "success"])

# %% [markdown]
# **The success metric.** For each situation, compare its mean judged
# empathy at alpha with its mean at alpha = 0 (same layer, same seeds).
# Steering *succeeds* on that situation when the change has alpha's sign,
# is larger than the seed-to-seed noise, and every reply at that alpha is
# coherent. The noise bar is twice the standard error of a situation's mean
# at alpha = 0 (the `threshold` column). A broken reply is never a success,
# and an unchanged reply never counts for negative alpha.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
base0 = table[table.alpha == 0].set_index("layer")
for (layer, pos, scale), t in table[table.alpha != 0].groupby(["layer", "positions", "scale"]):
    t = pd.concat([t, base0.loc[[layer]].reset_index()]).sort_values("alpha_rms")  # every line passes alpha = 0
    label = f"layer {layer}" + ("" if pos == "all" else f", {pos}") + (", paper A's grid" if scale == "unit" else "")
    style = dict(ls="-" if pos == "all" else "--", marker="s" if scale == "unit" else "o")
    band(axes[0], t.alpha_rms, t.score, t.score_lo, t.score_hi, label=label, **style)
    axes[1].plot(t.alpha_rms, t.coherent_share, label=label, **style)
axes[0].set(xlabel="push (x residual RMS)", ylabel="judged empathy (1-5)", title="Dose-response (95% CI)")
axes[1].set(xlabel="push (x residual RMS)", ylabel="share coherent", ylim=(-0.02, 1.02),
            title="Coherence")
axes[1].axhline(0.9, color="grey", ls=":", lw=1)
for ax in axes:
    ax.axvline(0, color="black", lw=0.6)
    ax.legend(fontsize=8)
plt.show()

# %% tags=["remove-input"]
box_rows = table[(table.layer == n // 2) & (table.positions == "all") & table.scale.isin(["rms", "any"])]
box_rows = box_rows.set_index("alpha")  # the unpushed row's scale is "any"
box_0, box_dn, box_up = (box_rows.loc[a] for a in (0, -1, 1))
box_score, box_success = ({a: interval(r[c], r[f"{c}_lo"], r[f"{c}_hi"])
                           for a, r in ((0, box_0), (-1, box_dn), (1, box_up))} for c in ("score", "success"))
display(result(
    f"Pushed by -1 and +1 x RMS at every position of layer {n // 2}, judged empathy is {box_score[-1]} and "
    f"{box_score[1]} against {box_score[0]} unpushed, with {box_dn.coherent_share:.2f} and "
    f"{box_up.coherent_share:.2f} of replies coherent against {box_0.coherent_share:.2f}; the honest success rate is "
    f"{box_success[-1]} down and {box_success[1]} up."))

# %% [markdown]
# ## 3. Paper A's keyword metric beside it
#
# Paper A counted empathy keywords minus task keywords and called a steered
# reply a success when the count moved in alpha's direction. It counted an
# unchanged count as success for negative alpha (chapter 02). Here it is
# computed on the same replies, against each situation's alpha = 0 reply
# with the same seed:

# %%
df = pd.DataFrame(records).assign(score=scores, coherent=coherent)
rows = []
for (layer, pos, scale, alpha), g in df[df.alpha != 0].groupby(["layer", "positions", "scale", "alpha"]):
    base = df[(df.layer == layer) & (df.alpha == 0)].drop_duplicates(["id", "seed"]).set_index(["id", "seed"]).text
    g = g.set_index(["id", "seed"])
    kw = keyword_success(base.loc[g.index].tolist(), g.text.tolist(), alpha)
    honest = table[(table.layer == layer) & (table.positions == pos) & (table.scale == scale)
                   & (table.alpha == alpha)].success.iat[0]
    rows.append({"layer": layer, "positions": pos, "scale": scale, "alpha": alpha,
                 "keyword success (paper A)": round(kw, 2),
                 "honest success": round(honest, 2), "coherent share": round(g.coherent.mean(), 2)})
kw = pd.DataFrame(rows)
show(kw.assign(push=[push_label(a, s_, rms[l]) for a, s_, l in zip(kw.alpha, kw.scale, kw.layer)]),
     columns={"layer": "layer", "positions": "positions", "push": "push (alpha)",
              "keyword success (paper A)": "keyword success (paper A)", "honest success": "honest success",
              "coherent share": "coherent share"})

# %% [markdown]
# Where the two disagree, look at the replies. At negative alpha the
# keyword metric rewards replies that did not change, and at large |alpha|
# it rewards broken text that happens to drop (or repeat) a keyword.

# %%
ex_layer = LAYERS[-1]  # the middle layer, where the push changes the reply
ex = df[(df.layer == ex_layer) & (df.positions == "all") & (df.scale == "rms") & (df.seed == SEED)
        & (df.id == prompts[0]["id"])]
ex = ex.sort_values("alpha")
print("situation:", prompts[0]["user"])
show(ex, columns={"alpha": "alpha (x RMS)", "text": "reply", "score": "judged empathy", "coherent": "coherent"})

# %% tags=["remove-input"]
box_neg, box_pos = kw[kw.alpha < 0], kw[kw.alpha > 0]
box_higher = int((box_neg["keyword success (paper A)"] > box_neg["honest success"]).sum())
display(result(
    f"Pushed away from empathy, paper A's keyword metric reads {box_neg['keyword success (paper A)'].mean():.2f} on "
    f"average against an honest success rate of {box_neg['honest success'].mean():.2f} (higher on {box_higher} of "
    f"{len(box_neg)} settings); pushed toward it, {box_pos['keyword success (paper A)'].mean():.2f} against "
    f"{box_pos['honest success'].mean():.2f}."))

# %% [markdown]
# ## 4. The best setting, against the goal
#
# The goal set for this book: at some layer and alpha, judged empathy rises
# for alpha > 0 *and* falls for alpha < 0 on at least 80% of held-out
# situations. The same setting must keep at least 90% of replies coherent.
# This is a plain sign test per situation (mean over seeds), looser than
# the success metric above, which also asks the change to beat the seed
# noise. Its baseline is `chance`: the share expected if steering did
# nothing. It is computed by shuffling each situation's replies among
# -|alpha|, 0 and +|alpha| (about 1/6, the chance that the three means fall
# in the right order). The table covers every layer, positions and |alpha|
# tried above.

# %%
goal = S.both_ways(records, scores, coherent, seed=SEED)


def goal_cells(r, rms):
    """One row of a both-ways table (``steering.both_ways``) as the tables print it (``rms``: each layer's)."""
    return {"layer": int(r.layer), "positions": r.positions,
            "push": push_label(r.alpha, r.scale, rms[r.layer], both=True),
            "situations": int(r.prompts), "moved both ways [95% CI]": interval(r.share, r.share_lo, r.share_hi),
            "chance": f"{r.chance:.2f}", "coherent share": f"{r.coherent_share:.2f}",
            "judged empathy at -alpha / 0 / +alpha": f"{r.score_down:.2f} / {r.score_0:.2f} / {r.score_up:.2f}",
            "meets the goal": "yes" if r.meets_goal else "no"}


def show_goal(g, rms, first=None, drop=(), where=""):
    """A both-ways table as the page prints it (``rms``: each layer's residual RMS): one row per setting
    (``first``: a column of ``g`` to put first, such as the direction; ``drop``: columns left out, such as a
    layer named in ``where``, the caption's start),
    with the number of situations and of settings that meet the goal in the caption."""
    view = pd.DataFrame([goal_cells(r, rms) for _, r in g.iterrows()])
    if first:
        view.insert(0, first, g[first].to_numpy())
    caption = (f"{where}{' / '.join(str(int(n_)) for n_ in g.prompts.unique())} situations; settings that meet "
               f"the goal (at least 0.80 moved both ways, 0.90 of replies coherent): {int(g.meets_goal.sum())} "
               f"of {len(g)}")
    return show(view.drop(columns=["situations", "meets the goal", *drop]), caption=caption)


show_goal(goal, rms)

# %% [markdown]
# The best setting is chosen from this table: among settings that keep at
# least 90% of replies coherent, the one that moves the most situations
# (when none does, the most situations regardless). Chosen on these
# situations, its share is biased upward, more so the more settings are
# tried. So the chosen setting is run once more on situations that took
# no part in the choice, and that number is the one held against the
# goal.

# %%
top = choosing.best_setting(goal, chosen_on)
fresh_sit = [r.text for r in ds.load_named("situations_heldout")][len(situations): len(situations) + size(12, 12, 18)]
fresh = [{"id": f"fresh-{i}", "user": s} for i, s in enumerate(fresh_sit)]
a_top = float(top.alpha)
conf_judged = judged_sweep(fresh, fit.directions, [int(top.layer)], [-a_top, 0, a_top], scale=top.scale,
                           positions=top.positions)
confirmed = S.both_ways(*conf_judged, seed=SEED).iloc[0]
confirmed_report, confirmed_judges_rho = reported(conf_judged)
print(f"confirmed on fresh situations, read by the reporting judge: {confirmed_report:.2f} moved both ways "
      f"(tuning judge {confirmed.share:.2f}); the judges' scores agree with rho {confirmed_judges_rho:.2f}")
show(pd.DataFrame({"chosen on": goal_cells(top, rms), "confirmed on fresh situations": goal_cells(confirmed, rms)})
     .rename_axis("setting and result").reset_index())

# %% [markdown]
# Recorded for the results chapter: the chosen setting's share on the
# situations it was chosen on and on fresh ones, each with an interval over
# situations. The fresh ones are also read by chapter 02's reporting
# empathy judge, a judge of another kind, which chose nothing. Beside them
# come paper A's keyword metric on the same replies as the first, and the
# best share on paper A's unit grid. That share is chosen on the same
# situations, so it is biased up as well. QUICK runs skip that grid and do
# not record it.

# %%
unit_goal = goal[goal.scale == "unit"]
unit_best = choosing.best_setting(unit_goal, chosen_on) if len(unit_goal) else pd.Series(np.nan, index=goal.columns)
kw_top = kw[(kw.layer == top.layer) & (kw.positions == top.positions) & (kw.scale == top.scale)
            & (kw.alpha.abs() == a_top)]
headline = record(
    both_ways_best=(top.share, top.share_lo, top.share_hi), both_ways_best_coherent=top.coherent_share,
    both_ways_best_layer=top.layer, both_ways_best_alpha=a_top, both_ways_best_chance=top.chance,
    both_ways_confirmed=(confirmed.share, confirmed.share_lo, confirmed.share_hi),
    both_ways_confirmed_coherent=confirmed.coherent_share, both_ways_confirmed_chance=confirmed.chance,
    both_ways_confirmed_report=confirmed_report, both_ways_confirmed_judges_rho=confirmed_judges_rho,
    keyword_success_best=kw_top["keyword success (paper A)"].mean(),
    coherent_alpha0=df[df.alpha == 0].coherent.mean(),
    paper_a_grid_best=(unit_best.share, unit_best.share_lo, unit_best.share_hi),
    paper_a_grid_best_chance=unit_best.chance, paper_a_grid_best_coherent=unit_best.coherent_share,
    paper_a_grid_best_alpha=unit_best.alpha)
pd.Series(headline).to_frame("value")

# %% [markdown]
# With the probe direction alone the goal is not met on the bundled 135M
# model (the default book's numbers), and the tables say why. The early
# layer, where the probe reads empathy best, does not move judged empathy
# with the push. Across paper A's whole grid (up to about 3 RMS either way)
# at least 0.92 of replies stay coherent. But every alpha's interval
# overlaps the unpushed replies' interval. No |alpha| there moves
# situations both ways with an interval above chance: at most 0.33 [0.00,
# 0.67], at 5 and 20, against 0.17. Paper A's keyword metric reads 0.75 to
# 0.92 at that layer's negative alphas, where the honest rate is 0: its
# rule counts an unchanged reply as a success. The middle layer moves
# replies both ways, but not far before they break. Pushed away from
# empathy, the model writes digits and letter salad (the example in
# section 3). At alpha = -1 hardly a reply passes the coherence checks,
# wherever the push is applied. Pushed toward empathy, the model writes a
# soup of short questions. Over all positions, 0.5 x RMS moved all six
# situations both ways (1.00), with 0.75 of replies coherent, below the
# bar. Pushing only the generated tokens keeps 0.96 of replies coherent at
# |alpha| = 0.5, where the effect is smaller: judged empathy 2.51, 2.88 and
# 3.29 at -0.5, 0 and +0.5. That is the chosen setting, 0.33 [0.00, 0.67]
# moved both ways, level with paper A's grid at alpha 5 and 20. **On the
# 12 fresh situations it moves 0.25 [0.00, 0.50] both ways, against a
# chance of 0.16**: an interval that includes chance, with 0.96 of replies
# coherent. There judged empathy is 2.51 at -0.5, 2.41 unpushed and 2.57
# at +0.5: both signs raise it a little, so the push away from empathy
# does not lower it. The reporting judge reads 0.50 of the fresh
# situations moved; its scores and the tuning judge's agree with rho 0.33.
# A probe direction that reads empathy well (AUROC near 1 in chapter 03)
# need not be a direction the model *writes* empathy with. Re-run with
# `MODEL = "gemma-2-2b-it"` (GPU) for a model with a wider range.
# Section 6 comes back to the goal with a second direction beside this
# one.

# %% tags=["remove-input"]
def box_vs_chance(lo, hi, chance):
    """Where a share's interval lies against its chance level, as the boxes say it (at the printed digits)."""
    lo, hi, chance = round(lo, 2), round(hi, 2), round(chance, 2)
    where = "above" if lo > chance else "below" if hi < chance else "an interval that includes"
    return f"{where} chance ({chance:.2f})"


box_moved = interval(confirmed.share, confirmed.share_lo, confirmed.share_hi)
top_push = push_label(top.alpha, top.scale, rms[top.layer], both=True)
display(result(
    f"The setting chosen on {int(top.prompts)} situations ({top_push} "
    f"at {top.positions} positions of layer {int(top.layer)}) moves {box_moved} of {int(confirmed.prompts)} fresh "
    f"situations both ways, {box_vs_chance(confirmed.share_lo, confirmed.share_hi, confirmed.chance)}, with "
    f"{confirmed.coherent_share:.2f} of replies coherent: the goal (0.80 moved, 0.90 coherent) is "
    f"{'met' if confirmed.meets_goal else 'not met'}."))

# %% [markdown]
# ## 5. A direction from the model's own replies (Persona Vectors)
#
# The probe direction was fitted on replies *other* models wrote (chapter
# 01's pairs) and read by this one. Persona Vectors builds the direction
# from the model's *own* writing instead. The recipe: ask the same
# questions under a trait-eliciting and a trait-suppressing system prompt
# (chapter 01's persona pairs, "You are a warm and caring assistant..."
# against "You are a cold and detached assistant..."). Average each reply's
# activations over its own tokens with its prompt in context. Then take the
# mean difference, keeping the questions where the judge scored the warm
# reply above the cold one (Persona Vectors keeps replies by their trait
# score). If the probe reads empathy but does not write it, a direction
# taken from the model's writing is the natural next try.
#
# It rests on one condition, checked first: the model must write
# differently under the two prompts. The extraction questions build the
# direction; the evaluation questions, which took no part in it, check
# that it separates the two personas' replies. Replies are greedy with a
# repetition penalty of 1.2 (chapter 04). The steering run uses the same
# situations, seeds, layer and positions as the probe's sweep above, so
# the two directions are compared on equal terms.

# %%
personas = ds.load_named("persona_pairs")[: size(2, 3, 6)]
questions = ds.load_named("persona_questions")
extract_q = [q for q in questions if q.split == "extract"][: size(3, 12, 12)]
eval_q = [q for q in questions if q.split == "eval"][: size(3, 12, 12)]
P_TOKENS = size(16, 40, 48)
own = persona_replies(lm, personas, extract_q, max_new_tokens=P_TOKENS)
own_eval = persona_replies(lm, personas, eval_q, max_new_tokens=P_TOKENS)
warm, cold = emp.score(own.positive, own.question), emp.score(own.negative, own.question)
warm_e, cold_e = emp.score(own_eval.positive, own_eval.question), emp.score(own_eval.negative, own_eval.question)
gap = bootstrap_ci(np.r_[warm - cold, warm_e - cold_e], seed=SEED)
follows = bootstrap_ci(np.r_[warm > cold, warm_e > cold_e].astype(float), seed=SEED)
pd.DataFrame({"judged empathy, warm prompt": [warm.mean(), warm_e.mean()],
              "judged empathy, cold prompt": [cold.mean(), cold_e.mean()],
              "share of questions warm > cold": [(warm > cold).mean(), (warm_e > cold_e).mean()],
              "pairs of replies": [len(own), len(own_eval)]},
             index=["extraction questions", "evaluation questions"]).round(2)

# %%
print(f"warm minus cold, every question: {gap[0]:+.2f} [{gap[1]:+.2f}, {gap[2]:+.2f}] judged empathy "
      f"(0 if the prompts were ignored); warm judged above cold on {follows[0]:.2f} [{follows[1]:.2f}, "
      f"{follows[2]:.2f}] of questions (0.5 if ignored)")
ex_i = 0
print("question:", own.question[ex_i])
print("  warm:", own.positive[ex_i])
print("  cold:", own.negative[ex_i])

# %%
MID = n // 2
kept = warm > cold
# a model that never follows the warm prompt better than the cold one (a random-weight test model) keeps no
# pair; the direction then uses every pair, and says so
use = kept if kept.any() else np.ones_like(kept)
if not kept.any():
    print("no extraction pair was judged warmer under the warm prompt: the persona direction uses every pair")
persona_dirs = persona_directions(lm, own, CANDIDATES, keep=use)
# the evaluation replies read as Persona Vectors reads them (system prompt in context) and after the question alone
det, det_alone = (readout.evaluate_direction(persona_dirs[MID], *(X[MID] for X in persona_activations(
    lm, own_eval.select(own_eval.complete), [MID], system=with_system)), seed=SEED) for with_system in (True, False))
pd.DataFrame({"cosine with the probe direction": {l: float(persona_dirs[l] @ fit.directions[l]
                                                           / np.linalg.norm(fit.directions[l]))
                                                 for l in CANDIDATES}}).rename_axis("layer").T.round(2)

# %%
print(f"kept {kept.sum()} of {len(own)} extraction pairs (warm judged above cold)")
for what, d_ in (("read after their system prompt", det), ("read after the question alone", det_alone)):
    print(f"layer {MID}: the persona direction on the evaluation questions' replies, warm against cold, {what}: "
          f"AUROC {d_.auroc:.2f} [{d_.auroc_ci[0]:.2f}, {d_.auroc_ci[1]:.2f}] (chance 0.5)")

# %%
def with_unpushed(judged_, source):
    """Judged sweep replies ``(records, scores, coherent)`` plus the alpha = 0 ones of another judged sweep at
    the same layers, situations and seeds: nothing acts at alpha = 0, so they are the same replies."""
    recs, sc, coh = judged_
    layers_ = {r["layer"] for r in recs}
    zero = [i for i, r in enumerate(source[0]) if r["alpha"] == 0 and r["layer"] in layers_]
    return (recs + [source[0][i] for i in zero], np.r_[sc, np.asarray(source[1])[zero]],
            [*coh, *(source[2][i] for i in zero)])


P_ALPHAS = [a for a in ALPHAS if a and abs(a) <= 1]
P_POSITIONS = size(["generated"], ["all", "generated"], ["all", "generated"])
persona_records = [r for pos in P_POSITIONS
                   for r in S.sweep(lm, prompts, persona_dirs, [MID], P_ALPHAS, scale="rms", positions=pos,
                                    seeds=SEEDS, decoding=SAMPLED)]
p_judged = (persona_records,
            *judge([r["text"] for r in persona_records], [situation_of[r["id"]] for r in persona_records]))
persona_goal = S.both_ways(*with_unpushed(p_judged, (records, scores, coherent)), seed=SEED)  # alpha 0: section 1's
probe_rows = goal[(goal.layer == MID) & (goal.scale == "rms") & goal.positions.isin(P_POSITIONS)
                  & goal.alpha.isin([abs(a) for a in P_ALPHAS])]
cols = ["positions", "alpha", "share", "share_lo", "share_hi", "chance", "coherent_share", "score_down",
        "score_0", "score_up"]
compare = pd.concat({"persona direction": persona_goal[cols], "probe direction": probe_rows[cols]})
show_goal(pd.concat([persona_goal.assign(direction="persona direction"),
                     probe_rows.assign(direction="probe direction")]), rms, first="direction", drop=["layer"],
          where=f"layer {MID}; ")

# %% [markdown]
# As in section 4, the setting that moved the most situations was chosen on
# these situations, so its share is biased upward. It is run once more on
# the fresh situations of section 4. The probe direction is run with it at
# the same setting (same layer, positions, alpha, situations and seeds:
# only the direction differs). Besides the both-ways share (the first
# table), the second table gives each sign's honest success rate. That is
# section 2's metric: the change has alpha's sign, beats the seed noise,
# and every reply is coherent.

# %%
p_top = choosing.best_setting(persona_goal, chosen_on)
p_a = float(p_top.alpha)


def confirm_row(judged_, a, second_reading, seed):
    """One direction's row of a confirmation table at +-``a``: the share moved both ways and each sign's honest
    success rate, with intervals over situations, the mean judged score at -a, 0 and +a, and
    ``second_reading(judged_)``: the reporting judge's share and the judges' rho."""
    bw = S.both_ways(*judged_, seed=seed).iloc[0]
    ss = S.steering_success(*judged_, seed=seed).set_index("alpha")
    rep_share, judges_rho = second_reading(judged_)
    return {"moved both ways": bw.share, "lo": bw.share_lo, "hi": bw.share_hi, "chance": bw.chance,
            "reporting judge": rep_share, "judges' rho": judges_rho,
            "coherent share": bw.coherent_share, "success at +alpha": ss.success[a], "+ lo": ss.success_lo[a],
            "+ hi": ss.success_hi[a], "success at -alpha": ss.success[-a], "- lo": ss.success_lo[-a],
            "- hi": ss.success_hi[-a], "score at -alpha": ss.score[-a], "score at 0": ss.score[0.0],
            "score at +alpha": ss.score[a]}


def show_confirm(rows):
    """A confirmation table (one ``confirm_row`` per direction) as the page prints it, in two tables: the goal's
    reading (moved both ways, its chance, coherence and the reporting judge's reading), then each sign's."""
    v = rows.rename(columns={"moved both ways": "share", "lo": "share_lo", "hi": "share_hi",
                             "success at +alpha": "up", "+ lo": "up_lo", "+ hi": "up_hi",
                             "success at -alpha": "down", "- lo": "down_lo", "- hi": "down_hi"})
    v = v.rename_axis("direction").reset_index()
    display(show(v, columns={"direction": "direction", "share": "moved both ways [95% CI]", "chance": "chance",
                             "coherent share": "coherent share",
                             "reporting judge": "reporting judge: moved both ways",
                             "judges' rho": "the judges' agreement (Spearman rho)"}, intervals=["share"]))
    display(show(v, columns={"direction": "direction", "up": "honest success at +alpha [95% CI]",
                             "down": "honest success at -alpha [95% CI]",
                             "score at -alpha": "judged empathy at -alpha", "score at 0": "at 0",
                             "score at +alpha": "at +alpha"}, intervals=["up", "down"]))


at_p_top = dict(scale=p_top.scale, positions=p_top.positions)  # the chosen setting, on the fresh situations
unpushed = judged_sweep(fresh, persona_dirs, [int(p_top.layer)], [0], **at_p_top)  # alpha 0: serves both directions
confirm = pd.DataFrame({name: confirm_row(with_unpushed(judged_sweep(fresh, dirs_, [int(p_top.layer)], [-p_a, p_a],
                                                                     **at_p_top), unpushed), p_a, reported, SEED)
                        for name, dirs_ in (("persona direction", persona_dirs),
                                            ("probe direction", fit.directions))}).T
print(f"chosen on the first situations: layer {int(p_top.layer)}, positions {p_top.positions}, alpha {p_a:g} x RMS "
      f"(moved both ways there: {p_top.share:.2f}, coherent {p_top.coherent_share:.2f}); "
      f"{len(fresh)} fresh situations x {len(SEEDS)} seeds:")
show_confirm(confirm)

# %%
pc = confirm.loc["persona direction"]
persona_headline = record(
    persona_gap=gap, persona_follows=follows[0], persona_kept=kept.mean(),
    persona_eval_auroc=(det.auroc, *det.auroc_ci), persona_eval_auroc_alone=(det_alone.auroc, *det_alone.auroc_ci),
    persona_both_ways_best=(p_top.share, p_top.share_lo, p_top.share_hi),
    persona_both_ways_best_chance=p_top.chance, persona_both_ways_best_coherent=p_top.coherent_share,
    persona_both_ways_best_alpha=p_a, persona_confirmed=(pc["moved both ways"], pc.lo, pc.hi),
    persona_confirmed_chance=pc.chance, persona_confirmed_coherent=pc["coherent share"],
    persona_confirmed_report=pc["reporting judge"], persona_confirmed_judges_rho=pc["judges' rho"],
    persona_confirmed_up=(pc["success at +alpha"], pc["+ lo"], pc["+ hi"]),
    persona_confirmed_down=(pc["success at -alpha"], pc["- lo"], pc["- hi"]),
    probe_same_setting_up=confirm.loc["probe direction", "success at +alpha"],
    probe_same_setting_down=confirm.loc["probe direction", "success at -alpha"],
    probe_same_setting_both=confirm.loc["probe direction", "moved both ways"])

# %% [markdown]
# How to read this section on the default model (the numbers below are the
# default book's). **The model hardly follows the persona prompts.** Its
# warm replies get no more judged empathy than its cold ones (warm minus
# cold -0.06 [-0.29, +0.16], an interval that holds 0). The warm reply is
# judged above the cold one on 0.54 [0.43, 0.65] of questions, against 0.5
# if the prompt were ignored. (The example above is one pair, the first
# question under the first persona pair.) The direction is built from the
# 19 of 36 extraction pairs where the warm reply was judged higher. It is
# not the probe's: the cosines run from -0.49 at layer 5 to +0.11, and
# are +0.05 at layer 15, where it is pushed. It does tell the two
# personas' replies apart on the evaluation questions: 0.76 [0.67, 0.85]
# AUROC read after the system prompt, 0.72 [0.63, 0.81] even without the
# prompt that produced them. So the replies differ in something, their
# register more than their judged empathy.
#
# **Steering with it does not hold up.** On the six choice situations the
# persona direction moved at most 0.33 [0.00, 0.67] of them both ways, at
# ±1 x RMS on the generated positions, with 0.75 of replies coherent. The
# two settings that kept 90% coherent, both at 0.5 x RMS, each moved 0.17
# [0.00, 0.50], level with chance (0.17). The choice is 0.5 x RMS at all
# positions (1.00 coherent). The fresh situations confirm no more: 0.08
# [0.00, 0.25] moved both ways, against a chance of 0.16, with 0.96 of
# replies coherent. Judged empathy is 2.40 at -0.5, 2.41 unpushed and 2.84
# at +0.5: the push toward empathy raises it, the push away leaves it
# where it was. The honest success rate is 0.33 [0.08, 0.58] upward and
# 0.08 [0.00, 0.25] downward. The reporting judge reads 0.58 of the fresh
# situations moved (rho 0.33 with the tuning judge). Paper A saw a
# one-sided effect on Dolphin-Llama-3.1-8B (94.4% success pushing toward
# empathy). There the push away from empathy broke the replies (empty
# outputs, "move move move"). Here the effect leans the same way, far
# weaker, and 0.96 of the replies stay coherent.
#
# **The probe direction at the same setting** is not section 4's choice,
# which pushed only the generated tokens. At 0.5 x RMS over all positions
# it moved 0.33 [0.08, 0.58] of the fresh situations both ways, an
# interval that includes chance (0.16), with 0.94 coherent. Pushed toward
# empathy it raises judged empathy from 2.41 to 3.84, beyond the noise on
# 0.83 [0.58, 1.00] of situations. Pushed away it gives 2.28, beyond the
# noise on 0.08 [0.00, 0.25]. The reporting judge reads 0.75 moved (rho
# 0.57). So on the fresh situations the probe direction moves more than
# the persona direction (0.33 against 0.08), mostly upward. The same push
# kept only 0.75 of replies coherent on the six choice situations, against
# 0.94 on the fresh ones: with six situations and two seeds per setting,
# the choice among settings is noisy. That is why section 4 confirms its
# choice on fresh situations and this comparison is not used to choose
# anything. Neither direction alone
# reaches the goal of 0.80; section 6 pushes along both at once.
#
# What this cannot show is whether a model that *does* follow its persona
# prompt gives a direction that steers both ways. Persona Vectors
# assumes one. Re-run this section with `MODEL = "gemma-2-2b-it"` (GPU)
# to test it.

# %% tags=["remove-input"]
box_moved = interval(pc["moved both ways"], pc.lo, pc.hi)
display(result(
    f"The model's warm-prompt reply is judged above its cold-prompt one on {interval(*follows)} of questions (0.50 "
    f"if ignored); pushed along the direction built from them, {box_moved} of {len(fresh)} fresh situations move "
    f"both ways, {box_vs_chance(pc.lo, pc.hi, pc.chance)}, against "
    f"{confirm.loc['probe direction', 'moved both ways']:.2f} for the probe direction at the same setting."))

# %% [markdown]
# ## 6. The two directions together
#
# On the default model, sections 4 and 5 each fell short with one
# direction. The probe direction breaks replies when pushed hard. Its
# chosen setting moved 0.25 of the fresh situations both ways, an interval
# that includes chance. On the same fresh situations the persona direction
# did no better (0.08), raising judged empathy when pushed toward it and
# not lowering it when pushed away. At the middle layer the two are close
# to orthogonal (the cosine table of section 5). So a push along their
# normalised sum gives each of them 1/sqrt(2) of the push. The sum is
# `u = (p + q) / |p + q|`, for the unit probe direction `p` and the unit
# persona direction `q`.
#
# Section 4's choice rested on six situations and two seeds, which left
# it noisy. This section uses more of both:
# - **choose** the strength on 24 situations of `situations_heldout` that
#   section 4 did not choose on (its fresh situations and the rest of the
#   file), with four seeds each. The grid is alpha in {0.35, 0.45, 0.55} x
#   RMS at all positions of the middle layer. The rule is `best_setting`'s:
#   the most situations moved among strengths that keep 90% of replies
#   coherent;
# - **confirm** that one setting on `situations_confirm`: 24 situations
#   written for this purpose after this direction, layer, positions and
#   grid had been fixed in explorations on the choice situations. No
#   other part of the book uses them (chapter 05's transcoder corpus
#   leaves them out);
# - **compare** on the same confirmation situations, seeds and setting,
#   each direction alone, so that what the sum adds is measured rather
#   than assumed.
#
# The grid was fixed by exploring the choice situations, so the choice's
# share is biased upward; the confirmation is the number held against the
# goal. Those explorations were read by the earlier tuning judge, a
# sentence-embedding judge, before chapter 02's two judges swapped roles.
# The strength within the grid is chosen with the current one. As elsewhere
# in this chapter, alpha is in units of the residual RMS on the prompts
# being pushed. So the same alpha is a slightly different push on the two
# sets of situations.

# %%
u_sum = fit.directions[MID] + persona_dirs[MID]  # both unit vectors
both_dir = {MID: u_sum / np.linalg.norm(u_sum)}
B_SEEDS = [SEED + i for i in range(size(1, 4, 6))]
B_GRID = [-0.55, -0.45, -0.35, 0, 0.35, 0.45, 0.55]  # the default book's and a FULL run's
B_ALPHAS = size([-0.45, 0, 0.45], B_GRID, B_GRID)
pool = [r.text for r in ds.load_named("situations_heldout")][len(situations):]  # 24 (18 in a FULL run)
choice = [{"id": f"choice-{i}", "user": s} for i, s in enumerate(pool[: size(8, 24, 18)])]
confirm_set = [{"id": f"confirm-{i}", "user": r.text}
               for i, r in enumerate(ds.load_named("situations_confirm")[: size(12, 24, 24)])]
sum_cosine = float(fit.directions[MID] @ persona_dirs[MID])
b_goal = S.both_ways(*judged_sweep(choice, both_dir, [MID], B_ALPHAS, seeds=B_SEEDS, scale="rms"), seed=SEED)
b_top = choosing.best_setting(b_goal, [r.id for r in heldout][len(situations):][: len(choice)])
b_a = float(b_top.alpha)
print(f"cosine of the probe and persona directions at layer {MID}: {sum_cosine:+.2f}; "
      f"{len(B_SEEDS)} seeds per situation")
show_goal(b_goal, rms)

# %%
at_top = dict(seeds=B_SEEDS, scale=b_top.scale, positions=b_top.positions)  # the chosen setting
b_judged = judged_sweep(confirm_set, both_dir, [MID], [-b_a, 0, b_a], **at_top)
alone = {name: with_unpushed(judged_sweep(confirm_set, dirs_, [MID], [-b_a, b_a], **at_top), b_judged)
         for name, dirs_ in (("probe direction alone", fit.directions),
                             ("persona direction alone", persona_dirs))}
b_rows = pd.DataFrame({"sum of both": confirm_row(b_judged, b_a, reported, SEED),
                       **{name: confirm_row(j, b_a, reported, SEED) for name, j in alone.items()}}).T
print(f"chosen on {len(choice)} situations of situations_heldout: alpha {b_a:g} x RMS at {b_top.positions} "
      f"positions of layer {MID} (moved both ways there: {b_top.share:.2f} [{b_top.share_lo:.2f}, "
      f"{b_top.share_hi:.2f}], coherent {b_top.coherent_share:.3f}); {len(confirm_set)} confirmation situations "
      f"x {len(B_SEEDS)} seeds:")
show_confirm(b_rows)

# %%
c_df = pd.DataFrame(b_judged[0]).assign(score=b_judged[1], coherent=b_judged[2])
print("coherent share per alpha (sum of both):", c_df.groupby("alpha").coherent.mean().round(3).to_dict())
c_ex = c_df[(c_df.id == confirm_set[0]["id"]) & (c_df.seed == SEED)].sort_values("alpha")
print("situation:", confirm_set[0]["user"])
display(show(c_ex, columns={"alpha": "alpha (x RMS)", "text": "reply", "score": "judged empathy",
                            "coherent": "coherent"}))
broken = c_df[~c_df.coherent & (c_df.alpha != 0)]
print(f"replies failing the coherence checks at -alpha / +alpha: {(broken.alpha < 0).sum()} / "
      f"{(broken.alpha > 0).sum()} of {(c_df.alpha < 0).sum()} each; e.g.:")
for t in broken.text.head(3):
    print("  ", repr(t[:100]))

# %%
bs = b_rows.loc["sum of both"]
sum_headline = record(
    sum_cosine=sum_cosine, sum_best=(b_top.share, b_top.share_lo, b_top.share_hi),
    sum_best_coherent=b_top.coherent_share, sum_best_alpha=b_a, sum_best_chance=b_top.chance,
    sum_confirmed=(bs["moved both ways"], bs.lo, bs.hi), sum_confirmed_chance=bs.chance,
    sum_confirmed_coherent=bs["coherent share"], sum_confirmed_report=bs["reporting judge"],
    sum_confirmed_judges_rho=bs["judges' rho"], sum_confirmed_up=(bs["success at +alpha"], bs["+ lo"], bs["+ hi"]),
    sum_confirmed_down=(bs["success at -alpha"], bs["- lo"], bs["- hi"]),
    sum_probe_alone=b_rows.loc["probe direction alone", "moved both ways"],
    sum_probe_alone_coherent=b_rows.loc["probe direction alone", "coherent share"],
    sum_persona_alone=b_rows.loc["persona direction alone", "moved both ways"],
    sum_persona_alone_coherent=b_rows.loc["persona direction alone", "coherent share"])
pd.Series(sum_headline).to_frame("value")

# %% [markdown]
# How to read this section on the default model (the default book's
# numbers). On the 24 choice situations, 0.55 x RMS moved the most
# situations both ways, 0.79 [0.62, 0.92], but kept only 0.85 of replies
# coherent. Among the strengths that kept 90% coherent the choice is 0.45
# x RMS: 0.50 [0.29, 0.71] moved, 0.94 coherent, against a chance of
# 0.16. **On the 24 confirmation situations the same push moved 0.46
# [0.25, 0.67] of them both ways**, against a chance of 0.17, **with 0.92
# of the pushed replies coherent**. Judged empathy is 2.28 at -0.45, 3.20
# unpushed and 3.32 at +0.45. **The goal is not met, on the choice or the
# confirmation situations, as the tuning judge reads it.** Its coherence
# half is met (0.92 against 0.90); its share half is not. The tuning judge
# counts 11 of 24 situations moved both ways where the goal asked for 20.
# The interval lies above chance but below 0.80. The push lowers judged
# empathy far more than it raises it.
#
# **The reporting judge reads more movement, and the judges agree only in
# part.** Chapter 02's second empathy judge (sentence embeddings; it chose
# nothing here) reads the same confirmation replies (24 situations, four
# seeds, at -0.45, 0 and +0.45). It finds 0.92 of the situations moved
# both ways; the two judges' scores of these replies agree with Spearman
# rho 0.47. It reads more than the tuning judge for each direction alone
# too (0.83 for the probe direction, 0.71 for the persona direction,
# against 0.62 and 0.29). It also reads more on section 4's confirmation
# (0.50 against 0.25) and on section 5's (0.58 against 0.08 for the
# persona direction, 0.75 against 0.33 for the probe). Its shares come
# without an interval or a chance level of its own here (shuffling gives
# near 1/6 for any judge when nothing moves). Two of them, the sum's and
# the probe direction's in this section, pass 0.80. The goal is read with
# the tuning judge, the one every choice here was made with. By its count
# only the sum and the probe direction alone in this section have
# intervals above chance. Every other confirmation in this chapter has an
# interval that reaches chance. What the reporting judge sees move and the
# tuning judge does not, this chapter cannot say.
#
# **The sum does no better than the probe direction alone.** At the same
# setting, on the same situations and seeds, the probe direction alone
# moves 0.62 [0.46, 0.79] both ways (0.93 coherent). The persona direction
# alone moves 0.29 [0.12, 0.46] (0.94 coherent), against a chance of 0.17
# for each. The sum's 0.46 lies between them; the intervals overlap. The
# probe direction alone raises judged empathy the most (3.66 against 3.20
# unpushed) and lowers it to 2.36 when pushed away. The persona direction
# alone lowers it a little (2.77) and does not raise it (3.05). Under this
# protocol (other and more situations, four seeds, 0.45 x RMS at all
# positions) the persona direction moves 0.29 and the probe direction
# 0.62. On section 5's 12 fresh situations (two seeds, 0.5 x RMS at all
# positions) they moved 0.08 and 0.33. Of the two, only the probe
# direction's interval here is above chance.
#
# Three more things qualify the result.
# - **Coherence holds overall but fails on one side.** 177 of the 192
#   pushed replies are coherent (0.92). All 15 that are not were pushed
#   away from empathy: 0.84 coherent at -0.45, 1.00 at +0.45, against 0.97
#   for the unpushed replies. Pushed down, the model still writes digits
#   and loops (the examples above). The fall in judged empathy at -0.45
#   comes partly where replies break, but not only: the example reply at
#   -0.45 is coherent and turns to task talk. How much of the fall is the
#   breakage, these outputs do not separate.
# - **Most single moves are within the sampling noise.** The goal is a sign
#   test on each situation's mean over four seeds. Section 2's stricter
#   metric asks each change to beat twice the standard error of the seed
#   noise and every reply at that alpha to be coherent. It credits 0.17
#   [0.04, 0.33] of the situations going up and 0.33 [0.17, 0.50] going
#   down. With four seeds that threshold is the standard deviation of a
#   situation's scores across seeds. Up, where every reply is coherent,
#   0.83 of the situations are not credited: their change is within the
#   noise or of the wrong sign. Down, a situation also fails when one of
#   its four replies breaks.
# - **The direction and grid were found by searching.** Two directions
#   summed, at strengths found by exploring the choice situations. The
#   confirmation situations guard the number against that search. Here the
#   share carried over: 0.50 on the choice situations, 0.46 on the
#   confirmation ones, both with intervals above chance and below 0.80.
#   The score that is read is chapter 02's tuning judge's, an n-gram judge
#   of the reply alone, with its measured accuracy; "judged empathy" is
#   that judge's reading.

# %% tags=["remove-input"]
box_met = bs["moved both ways"] >= 0.8 and bs["coherent share"] >= 0.9  # steering.both_ways's goal
display(result(
    f"Pushed {b_a:g} x RMS along the sum of both directions, {interval(bs['moved both ways'], bs.lo, bs.hi)} of "
    f"{len(confirm_set)} confirmation situations move both ways, {box_vs_chance(bs.lo, bs.hi, bs.chance)}, against "
    f"{b_rows.loc['probe direction alone', 'moved both ways']:.2f} and "
    f"{b_rows.loc['persona direction alone', 'moved both ways']:.2f} for the probe and persona directions alone, "
    f"with {bs['coherent share']:.2f} of replies coherent. The goal (0.80 moved, 0.90 coherent) is "
    f"{'met' if box_met else 'not met'}."))


# %% [markdown]
# ## 7. Paper A's own construct: the five games, on paper A's rubric
#
# Everything above steers personal messages and reads a 1-5 empathy
# score. Paper A steered its Empathy-in-Action games, with the prompt
# `"{objective}\n\n{empathy pressure}\n\nWhat do you do?"`, and scored each
# reply on its rubric: 0 pursues the task and ignores the person, 1 is
# kind but keeps the task first, 2 gives up task progress to help. It
# swept alpha from -20 to 20 on the unit vector, in both directions, per
# game. Its headline success rates were 65.3% (Qwen2.5-7B) and 61.7%
# (Phi-3-mini) for control both ways, and 94.4% pro-empathy only for the
# uncensored Dolphin-Llama-3.1-8B. Those are 4-8B models; ours has 135M
# parameters.
#
# Here we do the same, with rules fixed before any game reply is read:
#
# - **Layer.** The candidate layer with the best cross-validated AUROC on
#   the *training* pairs (`fit.best_layer`), not the test pairs.
# - **Direction and strengths.** The probe's unit direction, paper A's
#   grid of alphas, added at every position as paper A did. The table
#   below gives each alpha in residual-RMS units too.
# - **Replies.** Sampled at temperature 0.7, several seeds per game, each
#   seed drawing the same random numbers at every alpha.
# - **Judges.** Chapter 02's `RubricJudge` (trained on 20 other games
#   written for this book, validated on these five) reads the rubric level
#   as an expected value between 0 and 2. The tuning 1-5 empathy judge
#   reads the same replies beside it. Neither chooses anything here.
# - **Success.** `steering.steering_success` per game and alpha: the
#   game's mean rubric score moves in alpha's sign by more than twice the
#   seed-to-seed standard error at alpha = 0, with every reply coherent.
#   Paper A does not define its rate more closely; this is our reading.

# %%
games = list(scen.values())
game_layer = fit.best_layer  # chosen by cross-validation on the training pairs
game_prompts = [{"id": g.id, "user": ds.eia_prompt(g)} for g in games]
GAME_ALPHAS = size([-20, 0, 20], PAPER_A_ALPHAS, PAPER_A_ALPHAS)
GAME_SEEDS = [SEED + i for i in range(size(2, 4, 6))]
game_records = S.sweep(lm, game_prompts, fit.directions, [game_layer], GAME_ALPHAS, scale="unit", positions="all",
                       seeds=GAME_SEEDS, decoding=SAMPLED.replace(max_new_tokens=size(32, 48, 64)))
rubric = J.RubricJudge(seed=SEED)
game_texts = [r["text"] for r in game_records]
game_level = rubric.score(game_texts)  # expected rubric level, 0-2
game_emp = emp.score(game_texts, [ds.eia_prompt(scen[r["id"]]) for r in game_records])
game_coh = [c["coherent"] for c in coherence(game_texts)]
game_success = S.steering_success(game_records, game_level, game_coh, seed=SEED)
game_success_1to5 = S.steering_success(game_records, game_emp, game_coh, seed=SEED)  # the second reading
game_judges_rho = float(spearmanr(game_level, game_emp)[0])
game_rms = S.residual_rms(lm, [lm.chat_prompt(p["user"]) for p in game_prompts], game_layer)
print(f"layer {game_layer} (cross-validated AUROC on the training pairs {fit.cv_auroc(game_layer):.3f}); "
      f"{len(game_records)} replies: {len(games)} games x {len(GAME_ALPHAS)} alphas x {len(GAME_SEEDS)} seeds; "
      f"residual RMS there {game_rms:.1f}; the rubric judge and the 1-5 judge agree on these replies with Spearman "
      f"rho {game_judges_rho:.2f}, and the 1-5 judge credits "
      f"{game_success_1to5[game_success_1to5.alpha != 0].success.mean():.2f} of game-alpha cells")
display(show(game_success.assign(rms_units=game_success.alpha / game_rms), digits=2,
             intervals=["score", "success"], columns={
                 "alpha": "alpha (unit vector)", "rms_units": "alpha in residual RMS", "score": "rubric level (0-2)",
                 "success": "games moved beyond seed noise", "coherent_share": "coherent"},
             caption=f"layer {game_layer}, every position; intervals over the {len(games)} games"))

# %%
gdf = pd.DataFrame(game_records).assign(rubric=game_level, empathy=game_emp)
curves = gdf.groupby(["id", "alpha"])["rubric"].mean().unstack(0)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for gid in curves:
    axes[0].plot(curves.index, curves[gid], "o-", label=scen[gid].title)
axes[0].set(xlabel="alpha (unit vector)", ylabel="rubric level (0-2), mean over seeds",
            title=f"dose-response per game, layer {game_layer}", ylim=(-0.05, 2.05))
axes[0].legend(fontsize=7)
both = gdf.groupby("alpha")[["rubric", "empathy"]].mean()
axes[1].plot(both.index, both.rubric, "o-", label="rubric level (0-2)")
axes[1].plot(both.index, (both.empathy - 1) / 2, "s--", label="empathy judge, (score - 1) / 2")
axes[1].set(xlabel="alpha (unit vector)", ylabel="mean over games and seeds", title="two judges, same replies")
axes[1].legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# How to read this section on the default model (the default book's
# numbers). The rule picked layer 20, whose cross-validated AUROC on the
# training pairs is 0.984. On the test pairs layer 5 reads best (0.99
# against 0.96, section 1), but the rule does not look at them. The
# residual RMS there is 97.4 on the game prompts, so paper A's largest
# push, 20 unit vectors, is 0.21 of it. The pushes that moved judged
# empathy in section 4 were 0.5 x RMS and more, at layer 15. At this
# layer paper A's grid is a small push, which bears on why little moves.
#
# The rubric level hardly follows alpha. Unsteered, the five games
# average 0.19 [0.11, 0.28] on the 0-2 scale, close to "pursues the task".
# At +20 they average 0.42 [0.20, 0.58], but at -20 also 0.33 [0.22,
# 0.43]: the push away from empathy raises the level too. Per game (left
# panel) no curve climbs steadily: The Protector jumps at +5 and falls
# back at +10, and The Duel ends lower at +20 than unsteered. Beyond the
# seed noise, 0.20 of game-alpha cells move toward empathy at positive
# alphas and 0.04 away from it at negative ones. Paper A reported 65.3%
# (Qwen2.5-7B) and 61.7% (Phi-3-mini) both ways, on models of 4-8B
# parameters against our 135M.
#
# Coherence is not what limits it: 0.90 to 1.00 of replies pass at every
# alpha, 0.90 unsteered. The 1-5 empathy judge, reading the same replies
# (right panel), changes little from -10 to +20 and is lowest at -20.
# There the two judges part: the rubric level rises while the 1-5 score
# falls.

# %% [markdown]
# Paper A also correlated the probe's reading of a reply with its
# behavioural score (r = 0.71 for Phi-3). Here: each game reply's
# projection on the probe direction at the same layer, read by the
# unsteered model as the answer to its game, against its rubric level.
# The baseline is the 95th percentile of |r| when the levels are shuffled
# among the replies.

# %%
g_texts, g_starts = P.reply_texts(lm, [ds.eia_prompt(scen[r["id"]]) for r in game_records], game_texts)
g_proj = P.score_texts(lm, fit, g_texts, layer=game_layer, response_starts=g_starts)
game_r_ci = correlation_ci(g_proj, game_level, "pearson", seed=SEED)
game_r = game_r_ci[0]
rng_ = np.random.default_rng(SEED)
game_r_null = float(np.quantile([abs(np.corrcoef(g_proj, rng_.permutation(game_level))[0, 1]) for _ in range(1000)],
                                0.95))
print(f"probe projection vs rubric level over {len(g_proj)} replies: r = {interval(game_r, *game_r_ci[1:])}; "
      f"shuffled levels' 95th percentile of |r|: {game_r_null:.2f}; paper A (Phi-3): 0.71")

# %% [markdown]
# On the default model the probe's reading does not track the rubric
# level: r = -0.02 [-0.14, 0.11] over 220 replies, inside the 0.14 that
# shuffled levels reach, against paper A's 0.71 for Phi-3. The mean level
# stays between 0.12 and 0.42 at every alpha, so most replies read below
# level 1, which may leave r little spread to follow.

# %%
pro = game_success[game_success.alpha > 0].success.mean()
anti = game_success[game_success.alpha < 0].success.mean()
top_row = game_success.loc[game_success.alpha.idxmax()]
low_row = game_success.loc[game_success.alpha.idxmin()]
base_row = game_success[game_success.alpha == 0].iloc[0]
game_headline = record(
    game_layer=game_layer, game_success_pro=pro, game_success_anti=anti,
    game_success_both=float(game_success[game_success.alpha != 0].success.mean()),
    game_success_both_report=float(game_success_1to5[game_success_1to5.alpha != 0].success.mean()),
    game_judges_rho=game_judges_rho, game_level_top=top_row.score, game_level_0=base_row.score,
    game_level_bottom=low_row.score, game_coherent_top=top_row.coherent_share,
    game_coherent_bottom=low_row.coherent_share, game_probe_r=(game_r, *game_r_ci[1:]),
    game_probe_r_null=game_r_null)

# %% tags=["remove-input"]
display(result(
    f"On paper A's five games and rubric, at layer {game_layer} (chosen on the training pairs), the probe direction "
    f"moves {pro:.2f} of game-alpha cells toward empathy beyond seed noise at positive alphas and {anti:.2f} away from "
    f"it at negative ones (paper A: 65.3% and 61.7% both ways on 4-8B models); the rubric level is "
    f"{top_row.score:.2f} at alpha {top_row.alpha:g}, {base_row.score:.2f} unsteered and {low_row.score:.2f} at "
    f"alpha {low_row.alpha:g} ({top_row.coherent_share:.2f} and {low_row.coherent_share:.2f} of replies coherent). "
    f"The 1-5 judge, reading the same replies, credits {game_headline['game_success_both_report']:.2f} of all "
    f"game-alpha cells (the rubric judge: {game_headline['game_success_both']:.2f}; their rank agreement rho "
    f"{game_judges_rho:.2f}). The probe's reading of a reply tracks its level at r = "
    f"{interval(game_r, *game_r_ci[1:])} (shuffled: {game_r_null:.2f}; paper A 0.71)."))


# %% [markdown]
# ## 8. Export
#
# Each of the chapter's three directions is saved as safetensors under the
# cache folder. The file records what produced it (model, layer, site,
# pooling, a hash of the training pairs) and the setting this chapter chose
# for it on discovery situations (scale, positions, alpha). The sum of both
# is also written as a llama.cpp control vector. In llama.cpp,
# `--control-vector-scaled FILE s` applies it, adding to the output of each
# listed block, i.e. `resid_post`. The vector is added as it is, so `s` is
# in the model's units, not this chapter's RMS units.

# %%
out_dir = cache_dir("vectors") / model_slug(MODEL) / size("quick", "book", "full")  # this run's size
data_hash = stable_hash([p.model_dump() for p in pairs])
saved = {}
for name, dirs_, t in (("probe", fit.directions, top), ("persona", persona_dirs, p_top), ("sum", both_dir, b_top)):
    saved[name] = vectors.save_vector(out_dir / f"empathy_{name}.safetensors", dirs_[int(t.layer)], model=lm.name,
                                layer=int(t.layer), pooling="mean_response", dataset_hash=data_hash, scale=t.scale,
                                positions=t.positions, alpha=f"{float(t.alpha):g}", chosen_on="situations_heldout")
vec, meta = vectors.load_vector(saved["sum"])
gguf_path = vectors.export_control_vector(out_dir / "empathy_sum.gguf", {MID: both_dir[MID]}, model_hint=lm.arch)
back, hint = vectors.load_control_vector(gguf_path)
print("the sum's metadata:", meta)
print(f"control vector: model hint {hint!r}, layers {sorted(back)}, "
      f"max difference after reload {float((back[MID] - vec).abs().max()):.1e}")

# %% [markdown]
# From the shell the chosen steering is one command; the file's recorded
# setting is the default, and `--alpha`, `--layer`, `--scale` and
# `--positions` override it:
#
# ```
# emocircuits steer --vector ~/.cache/emocircuits/vectors/smollm2-135m/book/empathy_sum.safetensors \
#     --prompts in.jsonl --out out.jsonl
# ```
#
# On the default model that is section 6's choice, a setting that missed
# the goal: 0.45 x RMS at all positions of layer 15. It moved 0.46 of the
# confirmation situations both ways as the tuning judge reads them,
# against a chance of 0.17 and the goal's 0.80. It broke 15 of the 96
# replies it pushed away from empathy and none of those it pushed toward
# it. At the same setting the probe direction alone moved 0.62; its file
# records section 4's setting, which `--alpha 0.45 --positions all`
# overrides. A model that follows instructions may do better; the
# chapter's confirmation is the check to rerun on it.

# %% tags=["remove-input"]
display(result(
    f"The {len(saved)} directions are saved as safetensors with the setting chosen for each, and the sum's llama.cpp "
    f"control vector reloads with a largest difference of {float((back[MID] - vec).abs().max()):.1e} per entry from "
    f"the saved vector."))

# %% [markdown]
# ## What this chapter cannot show
#
# - **That the direction is the model's own.** Adding a vector can produce
#   a behaviour by a route the model never uses unprompted. Circuit
#   modulation (chapter 04) intervenes on components the model does use.
# - **Judged is not felt.** Every effect here is measured by chapter 02's
#   judges, with their measured accuracy; a judge blind to sarcasm would
#   score a sarcastic reply as warm.
# - **Small models, few situations.** The intervals above are over 6
#   situations and two sampled seeds for choosing the setting and 12 fresh
#   situations for confirming it, in the default book. A FULL run uses 12,
#   18 and three seeds; QUICK mode uses 8, 12 and one, sized so the
#   regression check sees a change of one situation in 12. A share of 6
#   situations moves in steps of 1/6, and the best of a dozen such shares
#   (the default book's goal table) is biased upward, which is why the
#   confirmation exists. Section 6 uses 24 situations to choose and 24 to
#   confirm, with four seeds each (18, 24 and six seeds in a FULL run).
#   Section 7's intervals are over five games, with four seeds each (six
#   in a FULL run, two in QUICK mode).
#
# ## Summary
#
# - `steering.sweep` runs the grid (layers, alphas on the unit vector as in
#   paper A or in RMS units as in paper B, positions).
#   `steering.steering_success` turns judged replies into the honest
#   success rate with its threshold.
# - `steering.both_ways` measures the goal (moved both ways, coherent)
#   against a shuffled-alpha chance level; `choosing.best_setting` picks a
#   setting, which is then confirmed on situations that did not choose it.
# - Paper A's keyword metric is shown beside it. It reads higher, mostly
#   because its negative-alpha rule counts unchanged replies, and also
#   because broken text can drop or repeat a keyword.
# - `personas.persona_replies` and `personas.persona_directions` build Persona
#   Vectors' direction from the model's own replies under a warm and a cold
#   system prompt. `personas.persona_activations(..., system=False)` is the
#   control that reads the replies without the prompt that produced them.
# - On the default model no direction meets the goal. The normalised sum of
#   the two directions moves 0.46 [0.25, 0.67] of 24 situations kept for
#   that check both ways, as the tuning judge reads them, against a chance
#   of 0.17 and the goal's 0.80. Its pushed replies are 0.92 coherent,
#   over the bar, but all 15 broken ones were pushed away from empathy
#   (section 6). Pushed away, judged empathy falls (3.20 to 2.28); pushed
#   toward it, it rises a little (3.32). At the same setting the probe
#   direction alone moves more (0.62 [0.46, 0.79]) and the persona
#   direction less (0.29), and most single moves are within the seed
#   noise. The reporting judge reads more of the situations moved (0.92
#   for the sum, 0.83 for the probe direction alone), without an interval
#   of its own, and agrees with the tuning judge in part (rho 0.47).
# - On paper A's five games and rubric (section 7), paper A's grid at
#   layer 20 moves 0.20 of game-alpha cells toward empathy beyond the seed
#   noise and 0.04 away, against paper A's 65.3% and 61.7% on 4-8B models.
#   Its largest push is 0.21 of the residual RMS there, and the probe's
#   reading does not track the rubric level (r = -0.02, shuffled 0.14).
# - `save_vector`, `export_control_vector` and `emocircuits steer` take a
#   direction out of the book.

# %% [markdown]
# ### References
#
# - Paper A: *Detecting and Steering LLMs' Empathy in Action*,
#   [arXiv:2511.16699](https://arxiv.org/abs/2511.16699): steering along
#   the probe direction, alpha sweeps, the keyword metric.
# - Chen et al., *Persona Vectors: Monitoring and Controlling Character
#   Traits in Language Models*,
#   [arXiv:2507.21509](https://arxiv.org/abs/2507.21509): the persona
#   direction.
# - Turner et al., *Steering Language Models With Activation Engineering*,
#   [arXiv:2308.10248](https://arxiv.org/abs/2308.10248), and Rimsky et
#   al., *Steering Llama 2 via Contrastive Activation Addition*,
#   [arXiv:2312.06681](https://arxiv.org/abs/2312.06681): adding a
#   direction while the model generates.
# - The appendix {doc}`Methods notes </book/methods>`: how the settings
#   were chosen before the confirmation situations were read.
