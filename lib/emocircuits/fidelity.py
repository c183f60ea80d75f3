"""How faithful a transcoder set is (chapter 05): the fraction of each MLP's output variance it explains
on held-out text, dead and dense features, and the next-token loss with every layer, or one at a time,
spliced in; and each feature's largest activation, which clamps are scaled by."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from .interventions import Set, apply_all, resolve
from .transcoders import TranscoderSet, first_left_out, mlp_io, text_batches

DENSE = 0.1  # a feature on at more than this share of tokens counts as dense in quality()


def quality(lm, tset: TranscoderSet, texts: Sequence[str], batch_size: int = 16, max_length: int = 128,
            progress: bool = False, baseline_texts: Sequence[str] = (), with_max: bool = False,
            fresh_texts: Sequence[str] = ()) -> dict[int, dict]:
    """Per layer on held-out ``texts`` (first tokens left out): variance explained, mean L0, the share of
    features never on (``dead``) and on at more than :data:`DENSE` of the tokens (``dense``).

    Also, as the baseline, the fraction of variance a least-squares *linear*
    map from ``mlp_in`` to ``mlp_out`` explains on ``texts`` (``linear_fve``),
    fitted on ``baseline_texts`` (e.g. some of the transcoders' training
    texts; without them, no baseline). ``with_max=True`` adds ``"max_act"``:
    every feature's largest activation on ``texts`` (a tensor, what
    :func:`max_activations` gives), from the same forward passes.

    ``fresh_texts``, a second held-out slice (texts no choice of the training recipe read), adds
    ``fresh_fve`` and ``fresh_linear_fve``: the same two measurements on them, from the same passes and the
    same linear map, so that a recipe tuned on ``texts`` can be read on text it was not tuned on. Without
    them both are NaN.
    """
    layers = sorted(tset)
    if not isinstance(with_max, bool):
        raise TypeError(f"with_max={with_max!r}: expected True or False")
    if not texts:
        raise ValueError("texts is empty: expected held-out texts to measure on")
    sums = {la: {"sse": 0.0, "fresh_sse": 0.0, "l0": 0.0, "n": 0, "fired": torch.zeros(tset[la].cfg.n_features),
                 "max": torch.zeros(tset[la].cfg.n_features), "y": [], "x": [], "part": []} for la in layers}
    # each text's part: 0 fits the linear map, 1 is measured (and feeds the feature statistics), 2 is fresh
    tagged = [(t, 0) for t in baseline_texts] + [(t, 1) for t in texts] + [(t, 2) for t in fresh_texts]
    for batch in tqdm(text_batches(tagged, batch_size, 0), desc="transcoder quality", disable=not progress):
        xin, xout, mask, _ = mlp_io(lm, [t for t, _ in batch], layers, max_length, tset.input_site)
        keep = first_left_out(mask)
        m = keep.reshape(-1)
        part = torch.tensor([h for _, h in batch])[:, None].expand_as(keep).reshape(-1)[m.cpu()]
        x_all = {la: xin[la].reshape(-1, lm.d_model)[m].float().cpu() for la in layers}
        y_all = {la: xout[la].reshape(-1, lm.d_model)[m].float().cpu() for la in layers}
        for la in layers:
            sums[la]["x"].append(x_all[la])
            sums[la]["y"].append(y_all[la])
            sums[la]["part"].append(part)
        for which in (1, 2):
            sel = part == which
            if not sel.any():
                continue
            with torch.no_grad():  # every layer's features first: a cross-layer set reconstructs from them all
                feats = {la: tset[la].encode(x_all[la][sel]) for la in layers}
                y_hat = {la: tset.reconstruct(la, feats, x_all[la][sel]) for la in layers}
            for la in layers:
                s, f, sse = sums[la], feats[la], float((y_hat[la] - y_all[la][sel]).pow(2).sum())
                if which == 2:
                    s["fresh_sse"] += sse
                    continue
                s["sse"] += sse
                s["l0"] += float((f != 0).sum())
                s["n"] += f.shape[0]
                s["fired"] += (f != 0).sum(0)
                s["max"] = torch.maximum(s["max"], f.max(0).values)
    out = {}
    for la in layers:
        s = sums[la]
        y = torch.cat(s["y"]).double()
        x = torch.cat(s["x"]).double()
        part = torch.cat(s["part"])
        sol = None
        if (part == 0).any():
            X = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
            sol = torch.linalg.lstsq(X[part == 0], y[part == 0]).solution

        def explained(which: int, sse: float) -> tuple[float, float]:
            """(FVE of the transcoder, FVE of the linear map) on one part's tokens."""
            sel = part == which
            if not sel.any():
                return float("nan"), float("nan")
            yt = y[sel]
            sst = float((yt - yt.mean(0)).pow(2).sum())
            lin = float("nan") if sol is None else 1 - float((X[sel] @ sol - yt).pow(2).sum()) / sst
            return 1 - sse / sst, lin

        (fve, lin), (fresh, fresh_lin) = explained(1, s["sse"]), explained(2, s["fresh_sse"])
        out[la] = {"fve": fve, "l0": s["l0"] / s["n"], "dead": float((s["fired"] == 0).float().mean()),
                   "dense": float((s["fired"] > DENSE * s["n"]).float().mean()), "linear_fve": lin, "tokens": s["n"],
                   "fresh_fve": fresh, "fresh_linear_fve": fresh_lin}
        if with_max:
            out[la]["max_act"] = s["max"]
    return out


def _encoded_batches(lm, texts: Sequence[str], batch_size: int, max_length: int):
    """Right-padded encodings of ``texts`` in batches of similar length (little padding)."""
    texts = sorted(texts, key=len)
    for j in range(0, len(texts), batch_size):
        yield {k: v.to(lm.device) for k, v in
               lm.encode(list(texts[j:j + batch_size]), padding_side="right", max_length=max_length).items()}


def _ce_sum(logits: torch.Tensor, enc: dict) -> tuple[float, int]:
    """Summed next-token cross-entropy (nats) over a batch's real tokens, and their count."""
    logits = logits.float()[:, :-1]
    tgt = enc["input_ids"][:, 1:]
    keep = enc["attention_mask"][:, 1:].bool()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                           reduction="none").reshape(tgt.shape)
    return float(ce[keep].sum()), int(keep.sum())


def next_token_loss(lm, texts: Sequence[str], interventions: Sequence = (), batch_size: int = 16,
                    max_length: int = 128) -> float:
    """Mean next-token cross-entropy (nats) over every real token of ``texts``, under ``interventions``."""
    items = resolve(lm, interventions)
    total, count = 0.0, 0
    for enc in _encoded_batches(lm, texts, batch_size, max_length):
        got: dict = {}
        with torch.inference_mode(), lm.nn.trace(enc, **lm.remote_kwargs):
            apply_all(lm, items, 0)
            got["logits"] = lm.nn.output.logits.save()
        t, c = _ce_sum(got["logits"], enc)
        total, count = total + t, count + c
    return total / count


def splice_losses(lm, tset: TranscoderSet, texts: Sequence[str], each: bool = True, batch_size: int = 16,
                  max_length: int = 128) -> dict:
    """Next-token loss clean, with every transcoder spliced in, with each one alone, and with each MLP zeroed.

    The one-layer conditions reuse the clean run below the changed layer:
    the decoder blocks under it are skipped (nnsight's ``skip``) and give
    the clean run's outputs instead, which are the same numbers a full
    forward would compute there. That halves the work of the ``2 x
    n_layers`` one-layer passes on average.
    """
    splices = tset.splices()
    conditions = [("all", 0, resolve(lm, splices))]
    if each:
        for la, tc in zip(sorted(tset), splices):
            # a cross-layer set's layer reads the features of the layers under it, so those run as they are
            first = min(tset.writers(la), default=la) if tc.feeds else la
            conditions.append((("each", la), first, resolve(lm, [tc])))
            zero = Set(f"mlp_out.{la}", list(range(lm.d_model)), 0.0)
            conditions.append((("zero_mlp", la), la, resolve(lm, [zero])))
    below = max((first for _, first, _ in conditions), default=0)
    totals = {"clean": 0.0, **{key: 0.0 for key, _, _ in conditions}}
    count = 0
    for enc in _encoded_batches(lm, texts, batch_size, max_length):
        got: dict = {}
        with torch.inference_mode(), lm.nn.trace(enc, **lm.remote_kwargs):
            got["outs"] = [lm.layer(i).output.save() for i in range(below)]
            got["logits"] = lm.nn.output.logits.save()
        outs = got.pop("outs")
        t, c = _ce_sum(got["logits"], enc)
        totals["clean"] += t
        count += c
        for key, first, items in conditions:
            with torch.inference_mode(), lm.nn.trace(enc, **lm.remote_kwargs):
                for i in range(first):
                    lm.layer(i).skip(outs[i])
                apply_all(lm, items, 0)
                got["logits"] = lm.nn.output.logits.save()
            totals[key] += _ce_sum(got["logits"], enc)[0]
    out = {"clean": totals["clean"] / count, "all": totals["all"] / count}
    if each:
        out["each"] = {la: totals[("each", la)] / count for la in sorted(tset)}
        out["zero_mlp"] = {la: totals[("zero_mlp", la)] / count for la in sorted(tset)}
    return out


def max_activations(lm, tset: TranscoderSet, texts: Sequence[str], batch_size: int = 16, max_length: int = 128
                    ) -> dict[int, torch.Tensor]:
    """The largest activation of every feature over ``texts`` (position 0 left out)."""
    layers = sorted(tset)
    best = {la: torch.zeros(tset[la].cfg.n_features) for la in layers}
    for j in range(0, len(texts), batch_size):
        xin, _, mask, _ = mlp_io(lm, texts[j:j + batch_size], layers, max_length, tset.input_site)
        mask = first_left_out(mask)
        for la in layers:
            with torch.no_grad():
                f = tset[la].encode(xin[la][mask].float().cpu())
            best[la] = torch.maximum(best[la], f.max(0).values) if len(f) else best[la]
    return best
