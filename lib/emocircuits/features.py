"""Reading transcoder features (chapter 05): the texts and tokens a feature fires on most, what it writes
into the logits (token lens), a short label from its top tokens, and which features stay on across the
steps of a reply (persistence)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .attribution import AttributionError, norm_weight
from .transcoders import TranscoderSet, first_left_out, mlp_io


def step_activity(lm, tset: TranscoderSet, prompts: Sequence[str], replies_ids: Sequence[Sequence[int]],
                  batch_size: int = 8) -> dict[int, np.ndarray]:
    """For each layer, ``[n_replies, n_features]``: the share of a reply's generation steps where a feature
    is active. A step is the position whose output chose the next reply token (the last prompt token,
    then every reply token but the last)."""
    if len(prompts) != len(replies_ids):
        raise AttributionError(f"{len(prompts)} prompts for {len(replies_ids)} replies")
    layers = sorted(tset)
    out = {la: np.zeros((len(prompts), tset[la].cfg.n_features), dtype=np.float32) for la in layers}
    tok = lm.tokenizer
    for j in range(0, len(prompts), batch_size):
        texts, spans = [], []
        for prompt, rid in zip(prompts[j:j + batch_size], replies_ids[j:j + batch_size]):
            n_prompt = len(lm.encode([prompt])["input_ids"][0])
            texts.append(prompt + tok.decode(list(rid)))
            spans.append((n_prompt - 1, n_prompt - 1 + max(len(rid), 1)))
        xin, _, mask, ids = mlp_io(lm, texts, layers, max_length=None, input_site=tset.input_site)
        for la in layers:
            for r, (a, b) in enumerate(spans):
                b = min(b, int(mask[r].sum()))
                with torch.no_grad():
                    f = tset[la].encode(xin[la][r, a:b].float().cpu())
                out[la][j + r] = (f > 0).float().mean(0).numpy()
    return out


def persistent(activity: dict[int, np.ndarray], threshold: float = 1.0) -> list[tuple[int, int, float, float]]:
    """Features active in at least ``threshold`` of the steps of *every* reply, as
    ``(layer, feature, min share over replies, mean share)``, most persistent first."""
    rows = []
    for la, a in activity.items():
        lo = a.min(0)
        for f in np.nonzero(lo >= threshold - 1e-9)[0]:
            rows.append((la, int(f), float(lo[f]), float(a[:, f].mean())))
    return sorted(rows, key=lambda r: (-r[2], -r[3], r[0], r[1]))


def token_lens(lm, tc, feature: int, top: int = 8) -> dict[str, list[tuple[str, float]]]:
    """Top tokens a feature reads from the embedding directly and writes toward the unembedding.

    De-embedding: ``W_enc[f] . (w_norm * e_t / rms(e_t))`` over the vocabulary (the direct path from a
    token's embedding, ignoring attention and earlier layers). Unembedding: ``(w_final * W_dec[f]) @ W_U.T``
    (a cross-layer feature: its decoder into its own layer).
    """
    if not 0 <= feature < tc.cfg.n_features:
        raise AttributionError(f"feature {feature} out of range 0..{tc.cfg.n_features - 1}")
    hf = lm.hf
    E = hf.get_input_embeddings().weight.detach().float().cpu()
    if lm.layout.embed_scale:
        E = E * float(lm.d_model) ** 0.5
    if tc.cfg.input_site == "resid_mid":  # the transcoder reads the residual stream itself
        e_n = E
    else:
        mid = lm.hf_part(tc.cfg.layer, lm.layout.mlp_in_norm)
        e_n = E * torch.rsqrt(E.pow(2).mean(-1, keepdim=True) + 1e-6) * norm_weight(lm, mid).cpu()
    de = e_n @ tc.W_enc[feature].detach().float()
    W_U = hf.get_output_embeddings().weight.detach().float().cpu()
    un = W_U @ (tc.W_dec[feature].detach().float() * norm_weight(lm, hf.model.norm).cpu())
    tok = lm.tokenizer

    def best(v):
        idx = torch.topk(v, top).indices
        return [(tok.decode([int(i)]), float(v[i])) for i in idx]

    return {"reads": best(de), "writes": best(un), "suppresses": best(-un)}


def top_contexts(lm, tset: TranscoderSet, nodes: Sequence[tuple[int, int]], texts: Sequence[str], top: int = 5,
                 width: int = 8, batch_size: int = 16) -> dict[tuple[int, int], list[dict]]:
    """For each ``(layer, feature)``, the ``top`` texts where it is most active (one position per text, the
    first token left out), with ``width`` tokens of context before it. One pass over ``texts`` for all."""
    nodes = [(int(la), int(f)) for la, f in nodes]
    for la, f in nodes:
        if la not in tset or not 0 <= f < tset[la].cfg.n_features:
            raise AttributionError(f"node (layer {la}, feature {f}) is not in the transcoder set")
    layers = sorted({la for la, _ in nodes})
    best: dict = {n: [] for n in nodes}
    toks: dict[int, list[int]] = {}
    for j in range(0, len(texts), batch_size):
        xin, _, mask, ids = mlp_io(lm, list(texts[j:j + batch_size]), layers, max_length=128,
                                   input_site=tset.input_site)
        keep = first_left_out(mask).cpu()
        for r in range(ids.shape[0]):
            toks[j + r] = ids[r][mask[r]].tolist()
        for la in layers:
            with torch.no_grad():
                acts = tset[la].encode(xin[la].float().cpu())
            for n in (n for n in nodes if n[0] == la):
                a = acts[..., n[1]].masked_fill(~keep, 0.0)
                v, p = a.max(1)
                best[n] += [(float(v[r]), j + r, int(p[r])) for r in range(a.shape[0]) if float(v[r]) > 0]
    out = {}
    for n, rows in best.items():
        rows.sort(key=lambda t: -t[0])
        out[n] = [{"activation": v, "before": lm.tokenizer.decode(toks[r][max(0, p - width):p]),
                   "token": lm.tokenizer.decode([toks[r][p]]), "text_index": r} for v, r, p in rows[:top]]
    return out


def feature_labels(lm, tset: TranscoderSet, nodes: Sequence[tuple[int, int]], texts: Sequence[str],
                   top: int = 3) -> dict[tuple[int, int], str]:
    """``{(layer, feature): "L3 F120: ' sorry' / ' feel'"}``: each feature named by the distinct tokens it is
    most active on in ``texts`` (:func:`top_contexts`, one pass for all), for labelling a graph."""
    out = {}
    for (la, f), rows in top_contexts(lm, tset, nodes, texts, top=top).items():
        toks = list(dict.fromkeys(repr(r["token"]) for r in rows))
        out[(la, f)] = f"L{la} F{f}: " + (" / ".join(toks) if toks else "(inactive)")
    return out


def feature_cards(lm, tset: TranscoderSet, nodes: Sequence[tuple[int, int]], texts: Sequence[str], top: int = 6,
                  contexts: int = 3) -> list[dict[str, str]]:
    """One row per ``(layer, feature)`` for a table: the tokens its encoder reads most, the tokens its decoder
    writes and suppresses most (:func:`token_lens`, ``top`` each), and its ``contexts`` most active places in
    ``texts`` (:func:`top_contexts`), each as ``…text before[token] (activation)``."""
    found = top_contexts(lm, tset, nodes, texts, top=contexts)
    rows = []
    for la, f in nodes:
        lens = token_lens(lm, tset[la], f, top=top)
        rows.append({"feature": f"L{la}/F{f}", **{k: " ".join(repr(t) for t, _ in lens[k])
                                                  for k in ("reads", "writes", "suppresses")},
                     "top contexts": " | ".join(f"…{c['before'][-40:]}[{c['token']}] ({c['activation']:.1f})"
                                                for c in found[(la, f)])})
    return rows
