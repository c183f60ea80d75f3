"""Forward passes and generation under interventions (chapter 00), sweeps and their statistics, and
vector export (chapter 06). The interventions themselves are in :mod:`.interventions` (re-exported here):
each acts at a named site (:mod:`.sites`):

* :class:`Add` adds ``alpha * vector`` to the site, like a steering vector;
* :class:`Set` sets chosen components (MLP neurons at ``mlp_act``, heads at
  ``attn_z``, or dimensions of any other site) to given values, like an
  ablation or a clamp;
* :class:`Scale` multiplies chosen components by a factor (enhancement).

``positions`` says where in the sequence an intervention acts:

``"all"``        every prompt and every generated position
``"prompt"``     the prompt's positions only (the first forward pass)
``"generated"``  the positions of generated tokens only (so the first new
                 token, predicted from the prompt, is not affected)
``"last:k"``     the last ``k`` prompt positions and every generated one
                 (paper B's "last position, every step" is ``"last:1"``)
``"last_prompt"`` the prompt's final position only, nothing generated
                 (paper C's clamp "in the final token of the current prompt")

Generation pads on the left, so "the last k prompt positions" are the last
``k`` columns of the first forward pass.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from .activations import capture, check_batch_size
from .cache import atomic_write
from .datasets import EMOTIONS, DataError, GenerationRecord, write_jsonl
from .interventions import Add, Scale, Set, Transcode, _check_positions, apply_all, resolve  # noqa: F401 (chapters' names)
from .profiling import count, timed
from .protocol import refuse_test_records
from .stats import bootstrap_ci

def forward(lm, texts: Sequence[str], interventions: Sequence = (), padding_side: str = "left",
            interventions_each: Sequence[Sequence] | None = None) -> torch.Tensor:
    """Logits ``[batch, tokens, vocab]`` of one forward pass with interventions applied: ``interventions``
    on every row, or ``interventions_each``, one list per text, each acting on its own row only."""
    texts = list(texts)
    if interventions_each is not None:
        if interventions:
            raise ValueError("give interventions (the same for every text) or interventions_each, not both")
        if isinstance(interventions_each, (str, bytes)) or len(interventions_each) != len(texts):
            raise ValueError(f"interventions_each must hold one list of interventions per text ({len(texts)} texts)")
        items = _rows_items([resolve(lm, ivs) for ivs in interventions_each])
    else:
        items = resolve(lm, interventions)
    enc = {k: v.to(lm.device) for k, v in lm.encode(texts, padding_side=padding_side).items()}
    out: dict = {}
    with torch.inference_mode(), lm.nn.trace(enc, **lm.remote_kwargs):
        apply_all(lm, items, 0, attention_mask=enc["attention_mask"])
        out["logits"] = lm.nn.output.logits
    return out["logits"].float().cpu()


def next_token_logits(lm, prompts: Sequence[str], interventions: Sequence = (), chat: bool = True,
                      batch_size: int = 16) -> torch.Tensor:
    """The first reply token's logits with ``interventions``, averaged over ``prompts`` (``[vocab]``): each
    prompt's last position.

    The difference of two such means (a push minus none, or one push minus
    the mean of several) names, by :meth:`torch.Tensor.topk`, the tokens a
    push promotes before any decoding choice is made, which says what it
    does to the text beyond a judge's label. It shows only the first step:
    what the push does once the reply has begun is not in it. ``prompts``
    are user messages (wrapped by :meth:`LoadedModel.chat_prompt` with
    ``chat=True``).
    """
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError(f"prompts must be a non-empty list of strings; got {prompts!r:.80}")
    check_batch_size(batch_size)
    texts = [lm.chat_prompt(p) for p in prompts] if chat else list(prompts)
    total = None
    for i in range(0, len(texts), batch_size):
        last = forward(lm, texts[i: i + batch_size], interventions)[:, -1].sum(0)  # left padding: -1 is last
        total = last if total is None else total + last
    return total / len(texts)


@timed("generation")
def generate(
    lm,
    prompts: Sequence[str],
    interventions: Sequence = (),
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    chat: bool = True,
    system: str | Sequence[str | None] | None = None,
    progress: bool = False,
    return_ids: bool = False,
    interventions_each: Sequence[Sequence] | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
):
    """Generate replies, optionally with interventions, and return the new text.

    ``prompts`` are user messages; with ``chat=True`` each is wrapped by
    :meth:`LoadedModel.chat_prompt` with ``system`` (one string for all, or
    one per prompt), otherwise used as is.
    Greedy by default. With ``do_sample=True`` every row draws its tokens
    from its own random stream, keyed by ``seed``, its text and (when the
    same text and interventions occur more than once) its occurrence: the
    Gumbel-max trick on the temperature-scaled logits, which samples from
    the same distribution as softmax sampling. So a reply does not depend
    on the batch size or on the other rows, and rows that differ only in
    their interventions (a grid of alphas) share their random numbers: a
    push too weak to change any token choice gives the unpushed reply
    exactly, and differences between settings come from the push, not from
    sampling noise.
    With ``return_ids=True`` returns a list of generated token-id lists instead.

    ``repetition_penalty`` > 1 lowers the logit of every token already in
    the row (prompt included) before the token is chosen, as in
    transformers' ``generate`` (CTRL's penalty; 1.2 is its authors'
    suggestion for greedy decoding). 1 leaves decoding untouched. Small
    models decoded greedily fall into loops ("I'm so sorry to hear that.
    I'm so sorry to hear that."), which the coherence checks fail whatever
    was pushed; a mild penalty keeps those loops from hiding the effect
    of an intervention. ``no_repeat_ngram_size`` = n > 0 never picks a token
    that would repeat an n-gram already in the row, prompt included (as
    transformers' ``generate``; paper B's generation script uses 3 with a
    penalty of 1.1); 0 leaves decoding untouched.

    ``interventions_each`` (instead of ``interventions``) gives each prompt its
    own list of interventions, e.g. one alpha or one target emotion per row:
    prompts with different lists still share batches, each intervention acting
    only on its own rows. On a CPU a decoding step is bound by reading the
    weights from memory, once per step whatever the batch: 16 rows cost about
    twice as much as 2 (smollm2, one thread), so a sweep run this way takes a
    fraction of the time of one call per setting.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of str, not one str")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
    check_batch_size(batch_size)
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature={temperature}: expected > 0 when sampling")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p}: expected a number in (0, 1]")
    if isinstance(repetition_penalty, bool) or not (isinstance(repetition_penalty, (int, float))
                                                    and 0 < repetition_penalty < float("inf")):
        raise ValueError(f"repetition_penalty={repetition_penalty!r}: expected a number > 0 (1 = no penalty)")
    if isinstance(no_repeat_ngram_size, bool) or not isinstance(no_repeat_ngram_size, int) or no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size={no_repeat_ngram_size!r}: expected an int >= 0 (0 = no block)")
    if interventions_each is not None:
        if interventions:
            raise ValueError("give interventions (the same for every prompt) or interventions_each, not both")
        if isinstance(interventions_each, (str, bytes)) or len(interventions_each) != len(prompts):
            raise ValueError(f"interventions_each must hold one list of interventions per prompt "
                             f"({len(prompts)} prompts)")
        per_row = [resolve(lm, ivs) for ivs in interventions_each]
    else:
        per_row = [resolve(lm, interventions)] * len(prompts)
    systems = [system] * len(prompts) if system is None or isinstance(system, str) else list(system)
    if len(systems) != len(prompts):
        raise ValueError(f"system has {len(systems)} entries for {len(prompts)} prompts")
    texts = [lm.chat_prompt(p, s) for p, s in zip(prompts, systems)] if chat else prompts
    # decoding is greedy; sampling is greedy on Gumbel-perturbed logits (_RowSampler)
    gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                      pad_token_id=lm.tokenizer.pad_token_id, repetition_penalty=float(repetition_penalty),
                      no_repeat_ngram_size=int(no_repeat_ngram_size))
    keys = _row_keys(texts, per_row, seed) if do_sample else None

    results: list = []
    starts = range(0, len(texts), batch_size)
    for j in tqdm(starts, desc="generate", disable=not progress, leave=False):
        batch = texts[j:j + batch_size]
        items = _rows_items(per_row[j:j + batch_size])
        enc = lm.encode(batch, padding_side="left")
        enc.pop("position_ids")  # generate derives positions from the mask itself
        enc = {k: v.to(lm.device) for k, v in enc.items()}
        kwargs = gen_kwargs
        if do_sample:
            sampler = _RowSampler(keys[j:j + batch_size], temperature, top_p)
            kwargs = {**gen_kwargs, "logits_processor": LogitsProcessorList([sampler])}
        if not items and not lm.remote:
            with torch.inference_mode():
                ids = lm.hf.generate(**enc, **kwargs)
        else:
            ids = _generate_traced(lm, enc, items, kwargs)
        new = ids[:, enc["input_ids"].shape[1]:].cpu()
        for row in new:
            row = row.tolist()
            cut = _strip_after_eos(row, lm)
            count(generated=len(cut))
            results.append(cut if return_ids else lm.tokenizer.decode(cut, skip_special_tokens=True).strip())
    return results


def _row_keys(texts: Sequence[str], per_row: Sequence[list], seed: int) -> list[int]:
    """One random-stream key per row: the seed, the text, and the row's
    occurrence among rows with the same text and the same interventions
    (so repeated rows still get independent samples)."""
    import hashlib

    seen: dict = {}
    keys = []
    for text, row in zip(texts, per_row):
        who = (text, tuple(id(iv) for _, iv in row))
        k = seen.get(who, 0)
        seen[who] = k + 1
        digest = hashlib.sha256(f"{int(seed)}\x00{k}\x00{text}".encode()).digest()
        keys.append(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))
    return keys


class _RowSampler(LogitsProcessor):
    """Sampling as greedy decoding of Gumbel-perturbed logits, one seeded stream per row.

    argmax(logits / T + g) with g standard Gumbel noise is a draw from
    softmax(logits / T); with ``top_p`` < 1 the noise is added only inside
    the nucleus. Every row draws one noise vector per step from its own
    generator, so its reply does not depend on the rows beside it.
    """

    def __init__(self, keys: Sequence[int], temperature: float, top_p: float = 1.0):
        self.gens = [torch.Generator().manual_seed(k) for k in keys]
        self.temperature, self.top_p = float(temperature), float(top_p)

    def __call__(self, input_ids, scores):
        logits = scores.float() / self.temperature
        if self.top_p < 1:
            order = logits.sort(-1, descending=True)
            probs = order.values.softmax(-1)
            before = probs.cumsum(-1) - probs  # probability mass ranked above each token
            drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order.indices, before >= self.top_p)
            logits = logits.masked_fill(drop, float("-inf"))
        u = torch.stack([torch.rand(logits.shape[-1], generator=g, dtype=torch.float64) for g in self.gens])
        gumbel = -torch.log(-torch.log(u.clamp(1e-300, 1 - 1e-16)))
        return logits + gumbel.to(logits.device, logits.dtype)


def generate_grid(lm, prompts: Sequence[str], settings: Sequence[Sequence], system=None, **kwargs) -> list[list]:
    """Replies to every prompt under each setting (one list of interventions
    per setting), as ``[setting][prompt]``. All rows share batches, each with
    its own setting's interventions (:func:`generate` with
    ``interventions_each``); ``system`` is one string, or one per prompt."""
    prompts, settings = list(prompts), list(settings)
    if not settings:
        raise ValueError("settings is empty: expected one list of interventions per setting")
    if system is not None and not isinstance(system, str):
        system = list(system) * len(settings)
    flat = generate(lm, prompts * len(settings), system=system,
                    interventions_each=[ivs for ivs in settings for _ in prompts], **kwargs)
    n = len(prompts)
    return [flat[i * n:(i + 1) * n] for i in range(len(settings))]


def _rows_items(per_row: Sequence[list]) -> list:
    """One batch's interventions from each row's resolved list: the shared list
    as is when every row has the same one, else each distinct intervention
    once with a boolean mask of the rows it acts on."""
    first = [id(iv) for _, iv in per_row[0]]
    if all([id(iv) for _, iv in row] == first for row in per_row[1:]):
        return list(per_row[0])
    seen: dict[int, tuple] = {}
    for r, row in enumerate(per_row):
        for site, iv in row:
            if id(iv) not in seen:
                seen[id(iv)] = (site, iv, torch.zeros(len(per_row), dtype=torch.bool))
            seen[id(iv)][2][r] = True
    return sorted(seen.values(), key=lambda t: t[0].order)  # stable: at one site, first-seen order


def _generate_traced(lm, enc: dict, items, gen_kwargs: dict) -> torch.Tensor:
    out: dict = {}
    with warnings.catch_warnings():
        # an open `tracer.all()` loop ends by design with a "never reached" warning
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        with torch.inference_mode(), lm.nn.generate(**gen_kwargs, **lm.remote_kwargs) as tracer:
            with tracer.invoke(enc):
                if items:  # (a remote model generates unsteered through here too)
                    for step in tracer.all():
                        apply_all(lm, items, step, attention_mask=enc["attention_mask"])
            with tracer.invoke():
                out["ids"] = tracer.result.save()
    return out["ids"]


def _strip_after_eos(row: list[int], lm) -> list[int]:
    eos = lm.hf.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {lm.tokenizer.eos_token_id}
    eos.discard(None)
    for i, t in enumerate(row):
        if t in eos:
            return row[:i]
    return row


# ---------------------------------------------------------------------------
# sweeps and their evaluation (chapter 06)

ALPHAS = (-20, -10, -5, -3, -1, 0, 1, 3, 5, 10, 20)  # paper A's grid, for a unit direction


def residual_rms(lm, texts: Sequence[str], layer: int, site_kind: str = "resid_post") -> float:
    """Root mean square of the site's entries over every real token of ``texts`` (paper B scales alpha by it)."""
    site = f"{site_kind}.{layer}"
    rows = capture(lm, list(texts), [site], pooling="none", progress=False)[site]
    x = torch.cat(rows)
    return float(x.pow(2).mean().sqrt())


def sweep(lm, prompts: Sequence[dict], direction, layers: Sequence[int], alphas: Sequence[float] = ALPHAS,
          scale: str = "unit", positions: str = "all", seeds: Sequence[int] = (0,), sample: bool = False,
          temperature: float = 0.7, max_new_tokens: int = 48, site_kind: str = "resid_post", batch_size: int = 32,
          progress: bool = False) -> list[dict]:
    """Generate a reply to every prompt at every (layer, alpha, seed), adding ``alpha x direction``.

    ``prompts`` are dicts with ``id``, ``user`` and optionally ``system``.
    ``direction`` is one vector for every layer or a dict ``{layer: vector}``;
    it is normalised to unit length. With ``scale="rms"`` alpha is in units
    of the site's residual RMS on the prompts (paper B); with ``"unit"`` it
    multiplies the unit vector (paper A). Several ``seeds`` only make sense
    with ``sample=True`` (greedy decoding ignores the seed); they give the
    seed-to-seed noise that :func:`steering_success` compares against.
    Each record: ``id, layer, alpha, scale, coef, seed, positions, text``,
    where ``coef`` is the multiplier actually applied to the unit vector.
    All settings' replies for one seed share batches of ``batch_size`` rows,
    each row with its own intervention (:func:`generate_grid`).
    """
    if scale not in ("unit", "rms"):
        raise ValueError(f"scale={scale!r}: expected 'unit' or 'rms'")
    if len(set(seeds)) > 1 and not sample:
        raise ValueError("several seeds with greedy decoding give identical replies; pass sample=True")
    _check_positions(positions)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty")
    users = [p["user"] for p in prompts]
    systems = [p.get("system") for p in prompts]
    chat_texts = [lm.chat_prompt(u, s) for u, s in zip(users, systems)]
    grid = []  # (layer, alpha, coef, interventions), one per setting
    for layer in layers:
        vec = direction[layer] if isinstance(direction, dict) else direction
        vec = torch.as_tensor(vec, dtype=torch.float32)
        vec = vec / vec.norm()
        unit = residual_rms(lm, chat_texts, layer, site_kind) if scale == "rms" else 1.0
        for alpha in alphas:
            coef = float(alpha) * unit
            ivs = [Add(f"{site_kind}.{layer}", vec, alpha=coef, positions=positions)] if alpha != 0 else []
            grid.append((int(layer), float(alpha), coef, ivs))
    texts = {seed: generate_grid(lm, users, [g[3] for g in grid], system=systems, max_new_tokens=max_new_tokens,
                                 do_sample=sample, temperature=temperature, seed=seed, batch_size=batch_size,
                                 progress=progress)
             for seed in seeds}  # seed -> [setting][prompt]
    out = []
    for g, (layer, alpha, coef, _) in enumerate(grid):
        for seed in seeds:
            out.extend({"id": p["id"], "layer": layer, "alpha": alpha, "scale": scale, "coef": coef,
                        "seed": int(seed), "positions": positions, "text": t}
                       for p, t in zip(prompts, texts[seed][g]))
    return out


def _judged_frame(records: Sequence[dict], scores: Sequence[float], coherent: Sequence[bool]):
    """Sweep records with their judged score and coherence as a DataFrame, checked for a baseline.

    ``positions`` is "all" and ``scale`` "unit" when absent. Nothing acts at
    alpha = 0, so those replies are labelled positions "all" and scale
    "any" whatever they were swept with, and kept once per (id, layer,
    seed): they are the baseline of every positions and scale of their
    layer, which each layer must have.
    """
    import pandas as pd

    if not (len(records) == len(scores) == len(coherent)):
        raise ValueError(f"records, scores and coherent must have the same length, got "
                         f"{len(records)}, {len(scores)}, {len(coherent)}")
    df = pd.DataFrame(records)
    if "positions" not in df:
        df["positions"] = "all"
    if "scale" not in df:
        df["scale"] = "unit"
    df = df[["id", "layer", "alpha", "seed", "positions", "scale"]].assign(score=list(map(float, scores)),
                                                                           coherent=list(map(bool, coherent)))
    df.loc[df.alpha == 0, ["positions", "scale"]] = ["all", "any"]
    df = df.drop_duplicates(["id", "layer", "alpha", "seed", "positions", "scale"])
    no_base = sorted(set(df.layer) - set(df.layer[df.alpha == 0]))
    if no_base:
        raise ValueError(f"layer {no_base[0]} has no alpha = 0 replies: the sweep needs them as its baseline")
    return df


def steering_success(records: Sequence[dict], scores: Sequence[float], coherent: Sequence[bool],
                     n_boot: int = 1000, seed: int = 0):
    """Per (layer, positions, scale, alpha): judged score, coherent share, and the honest success rate.

    For each prompt, ``delta`` is its mean score over seeds at alpha minus
    at alpha = 0 (same layer; the alpha = 0 replies of a layer are the
    baseline of every ``positions``, since nothing acts at alpha = 0). The
    noise threshold is twice the standard error of a prompt's mean at
    alpha = 0 (pooled seed-to-seed SD / sqrt(seeds)); with one seed it is 0
    and any change counts. A prompt succeeds when ``delta`` has alpha's
    sign, exceeds the threshold, and every reply at that alpha is coherent.
    Alpha = 0 rows (``positions`` "all") report the baseline and no success
    rate (and scale "any"). Records without ``positions`` count as "all",
    without ``scale`` as "unit". Returns a pandas DataFrame with bootstrap
    intervals over prompts.
    """
    import numpy as np
    import pandas as pd

    df = _judged_frame(records, scores, coherent)
    rows = []
    for layer, lay in df.groupby("layer"):
        per = lay.groupby(["positions", "scale", "alpha", "id"]).agg(
            score=("score", "mean"), sd=("score", "std"), n=("score", "size"), coherent=("coherent", "all"))
        base = per.xs(("all", "any", 0.0), level=("positions", "scale", "alpha"))
        n_seeds = int(base.n.max())
        pooled_sd = float(np.sqrt(np.nanmean(base.sd.to_numpy() ** 2))) if n_seeds > 1 else 0.0
        threshold = 2 * pooled_sd / np.sqrt(n_seeds) if n_seeds > 1 else 0.0
        for (pos, sc, alpha), g in per.groupby(level=["positions", "scale", "alpha"]):
            g = g.droplevel(["positions", "scale", "alpha"])
            delta = (g.score - base.score.reindex(g.index)).to_numpy()
            raw = lay[(lay.positions == pos) & (lay.scale == sc) & (lay.alpha == alpha)]
            row = {"layer": layer, "positions": pos, "scale": sc, "alpha": alpha, "score": float(g.score.mean()),
                   "coherent_share": float(raw.coherent.mean()), "threshold": threshold}
            if len(g) > 1:
                row["score_lo"], row["score_hi"] = bootstrap_ci(g.score.to_numpy(), n_boot=n_boot, seed=seed)[1:]
            if alpha != 0:
                ok = (np.sign(delta) == np.sign(alpha)) & (np.abs(delta) > threshold) & g.coherent.to_numpy()
                row["success"] = float(ok.mean())
                if len(ok) > 1:
                    row["success_lo"], row["success_hi"] = bootstrap_ci(ok.astype(float), n_boot=n_boot,
                                                                        seed=seed)[1:]
            rows.append(row)
    return pd.DataFrame(rows)


def both_ways(records: Sequence[dict], scores: Sequence[float], coherent: Sequence[bool], min_share: float = 0.8,
              min_coherent: float = 0.9, n_perm: int = 200, n_boot: int = 1000, seed: int = 0):
    """Per (layer, positions, scale, |alpha|): the share of prompts moved both ways, with its chance level.

    A prompt is *moved both ways* when its mean score over seeds is above
    its alpha = 0 mean at ``+|alpha|`` and below it at ``-|alpha|``. The
    alpha = 0 replies of a layer are the baseline of every ``positions`` at
    that layer (no intervention acts at alpha = 0). ``coherent_share`` is
    over every reply at ``+-|alpha|``. ``chance`` is the share expected
    when steering does nothing: each prompt's replies at ``-|alpha|``, 0
    and ``+|alpha|`` are shuffled among the three alphas (``n_perm`` times,
    seeded) and the share recomputed; without effect each order of the
    three means is equally likely, so it is near 1/6. ``meets_goal``: share >=
    ``min_share`` and coherent share >= ``min_coherent``. Records need
    ``id, layer, alpha, seed`` and may carry ``positions`` (default
    ``"all"``) and ``scale`` (default ``"unit"``). Returns a pandas DataFrame with a bootstrap interval over
    prompts for the share.
    """
    import numpy as np
    import pandas as pd

    df = _judged_frame(records, scores, coherent)
    rng = np.random.default_rng(seed)
    rows = []
    for layer, lay in df.groupby("layer"):
        base = lay[lay.alpha == 0]
        for (pos, sc), grp in lay[lay.alpha != 0].groupby(["positions", "scale"]):
            for a in sorted(set(grp.alpha.abs())):
                up, down = grp[grp.alpha == a], grp[grp.alpha == -a]
                ids = sorted(set(up.id) & set(down.id) & set(base.id))
                if not ids:
                    continue
                trip = pd.concat([down.assign(k=0), base.assign(k=1), up.assign(k=2)])
                trip = trip[trip.id.isin(ids)]
                groups = [g.sort_values(["k", "seed"]) for _, g in trip.groupby("id")]
                s = [g.score.to_numpy() for g in groups]
                k = [g.k.to_numpy() for g in groups]

                def moved(labels):  # per prompt: the mean at -a below the mean at 0, and that below +a
                    down_, base_, up_ = (np.array([x[lab == j].mean() for x, lab in zip(s, labels)])
                                         for j in range(3))
                    return (up_ > base_) & (down_ < base_)

                ok = moved(k).astype(float)
                chance = np.mean([moved([rng.permutation(lab) for lab in k]).mean() for _ in range(n_perm)])
                coh = float(pd.concat([up, down]).coherent.mean())
                row = {"layer": layer, "positions": pos, "scale": sc, "alpha": float(a), "prompts": len(ids),
                       "share": float(ok.mean()), "chance": float(chance), "coherent_share": coh,
                       "score_up": float(up[up.id.isin(ids)].score.mean()),
                       "score_0": float(base[base.id.isin(ids)].score.mean()),
                       "score_down": float(down[down.id.isin(ids)].score.mean())}
                row["share_lo"], row["share_hi"] = (bootstrap_ci(ok, n_boot=n_boot, seed=seed)[1:]
                                                    if len(ok) > 1 else (np.nan, np.nan))
                row["meets_goal"] = bool(row["share"] >= min_share and coh >= min_coherent)
                rows.append(row)
    cols = ["layer", "positions", "scale", "alpha", "prompts", "share", "share_lo", "share_hi", "chance", "coherent_share",
            "score_down", "score_0", "score_up", "meets_goal"]
    return pd.DataFrame(rows, columns=cols)


def best_setting(table, record_ids: Sequence[str], min_coherent: float = 0.9):
    """The row of a :func:`both_ways` table to carry forward: coherent enough first, then the largest share.

    Ranked by (coherent share >= ``min_coherent``, share, coherent share):
    a setting that keeps replies coherent beats one that moves more prompts
    by breaking them. Ties go to the smaller |alpha| (the gentler push, when the tied settings share a
    scale). ``record_ids`` names the data records the table's prompts were made from (the situations'
    ids); a test record among them, or a missing one, is refused
    (:func:`emocircuits.protocol.refuse_test_records`): a setting is chosen on discovery situations only.
    """
    if isinstance(record_ids, str):
        raise ValueError(f"record_ids={record_ids!r}: expected a list of record ids, not one string")
    refuse_test_records(record_ids, "best_setting")
    if len(table) == 0:
        raise ValueError("the both_ways table is empty: no setting had replies at +alpha, -alpha and 0")
    t = table.assign(_ok=table.coherent_share >= min_coherent, _neg_alpha=-table.alpha)
    return t.sort_values(["_ok", "share", "coherent_share", "_neg_alpha"], kind="stable").iloc[-1].drop(
        ["_ok", "_neg_alpha"])


# ---------------------------------------------------------------------------
# export: safetensors with metadata, and llama.cpp control vectors


def save_vector(path, vector, *, model: str, layer: int, site: str = "resid_post", pooling: str = "",
                dataset_hash: str = "", **extra: str):
    """One steering vector as safetensors (tensor ``vector``), with string metadata; written atomically."""
    from pathlib import Path

    from safetensors.torch import save_file

    vec = torch.as_tensor(vector, dtype=torch.float32).contiguous()
    if vec.ndim != 1:
        raise ValueError(f"vector must be 1-D, got shape {tuple(vec.shape)}")
    meta = {"model": model, "layer": str(int(layer)), "site": site, "pooling": pooling,
            "dataset_hash": dataset_hash, "d_model": str(vec.numel()), **{k: str(v) for k, v in extra.items()}}
    return atomic_write(Path(path), lambda p: save_file({"vector": vec}, str(p), metadata=meta))


def load_vector(path) -> tuple[torch.Tensor, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if "vector" not in f.keys():
                raise ValueError(f"{path}: no tensor named 'vector' (expected a file written by save_vector)")
            return f.get_tensor("vector"), dict(f.metadata() or {})
    except SafetensorError as err:
        raise ValueError(f"{path}: not a safetensors file ({err}); expected a file written by save_vector") from None


def export_control_vector(path, directions: dict, model_hint: str, site: str = "resid_post"):
    """Write llama.cpp's control-vector GGUF (architecture ``controlvector``, tensors ``direction.L``).

    llama.cpp adds ``direction.L`` to the output of block L, which is this
    book's ``resid_post.L``; it has no slot for L = 0, so layer 0 is refused.
    The strength is chosen at load time (``--control-vector-scaled FILE s``).
    """
    from pathlib import Path

    import gguf
    import numpy as np

    if site != "resid_post":
        raise ValueError(f"site={site!r}: llama.cpp control vectors act on the block output, resid_post only")
    if not directions:
        raise ValueError("directions is empty")
    bad = [l for l in directions if int(l) < 1]
    if bad:
        raise ValueError(f"layers {bad}: llama.cpp control vectors start at layer 1 (block outputs 1..n-1)")

    def write(p):
        w = gguf.GGUFWriter(str(p), "controlvector")
        w.add_string("controlvector.model_hint", model_hint)
        w.add_uint32("controlvector.layer_count", len(directions))
        for layer in sorted(directions, key=int):
            w.add_tensor(f"direction.{int(layer)}",
                         np.ascontiguousarray(torch.as_tensor(directions[layer]).float().numpy()))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    return atomic_write(Path(path), write)


def load_control_vector(path) -> tuple[dict[int, torch.Tensor], str]:
    """Read a control-vector GGUF back: ``({layer: vector}, model_hint)``."""
    import gguf

    r = gguf.GGUFReader(str(path))
    arch = r.fields.get("general.architecture")
    if arch is None or bytes(arch.parts[arch.data[0]]).decode() != "controlvector":
        raise ValueError(f"{path}: not a control-vector GGUF (general.architecture is not 'controlvector')")
    hint_field = r.fields.get("controlvector.model_hint")
    hint = bytes(hint_field.parts[hint_field.data[0]]).decode() if hint_field is not None else ""
    out = {}
    for t in r.tensors:
        if t.name.startswith("direction."):
            out[int(t.name.split(".")[1])] = torch.tensor(t.data.copy()).reshape(-1).float()
    return out, hint


# ---------------------------------------------------------------------------
# elicitation


def elicit(lm, prompts: list[dict], max_new_tokens: int = 100, seed: int = 0, do_sample: bool = False,
           temperature: float = 1.0, judge=None, batch_size: int = 8, out: str | Path | None = None,
           progress: bool = True) -> list[GenerationRecord]:
    """Generate a reply to every prompt and keep it with everything needed to redo it.

    ``prompts`` are dicts with ``id``, ``user`` and optionally ``system`` and
    ``emotion`` (as :func:`datasets.sev_prompts` makes). Paper B's setting is greedy
    decoding of 100 tokens. With a ``judge`` (a callable taking a list of
    replies and returning one dict per reply with a ``label``), each record
    stores the verdict and ``accepted`` = the judged label equals the
    instructed emotion, the filter paper B applies before computing
    directions. With ``out`` the records are written atomically as JSONL.
    """
    if not prompts:
        raise DataError("prompts is empty")
    for p in prompts:
        missing = [k for k in ("id", "user") if not p.get(k)]
        if missing:
            raise DataError(f"prompt {p.get('id', '?')!r}: missing {', '.join(missing)}")
        if p.get("emotion") is not None and p["emotion"] not in EMOTIONS:
            raise DataError(f"prompt {p['id']!r}: unknown emotion {p['emotion']!r}; expected one of {', '.join(EMOTIONS)}")
    settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                "temperature": temperature if do_sample else None, "batch_size": batch_size}
    texts = generate(lm, [p["user"] for p in prompts], system=[p.get("system") for p in prompts],
                     max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, seed=seed,
                     batch_size=batch_size, progress=progress)
    verdicts = judge(texts) if judge is not None else [None] * len(texts)
    records = []
    for p, text, v in zip(prompts, texts, verdicts):
        accepted = None
        if v is not None and p.get("emotion") is not None:
            accepted = v.get("label") == p["emotion"]
        records.append(GenerationRecord(id=f"{lm.name}:{p['id']}", model=lm.name, prompt_id=p["id"],
                                        emotion=p.get("emotion"), system=p.get("system"), user=p["user"],
                                        text=text, seed=seed, settings=settings, judge=v, accepted=accepted))
    if out is not None:
        write_jsonl(out, records)
    return records
