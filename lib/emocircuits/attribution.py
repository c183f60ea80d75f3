"""Attribution graphs over transcoder features, and circuits grown through them (chapter 05).

The *replacement model* runs one prompt with every MLP replaced by its
transcoder plus an error term (what the transcoder misses), with the
attention patterns and every normalisation scale frozen at the values of the
real forward pass. Frozen that way, everything from the token embeddings,
the feature activations and the error terms to any feature's pre-activation
or any logit is *linear*; the direct effect of a source node on a target is
the gradient of the target with respect to the source times the source's
value, with the other features held fixed. Summed over every source, plus the
constant that biases contribute, the edges into a node reproduce it exactly
(:func:`attribution_graph` checks this for every row it computes).

Nodes: active features at positions 1.. (position 0, the BOS token, is left
whole to its error node, as in the transcoder-circuits literature), one error
node per (layer, position), one node per input token, and the target logit
(the logit of a token minus the mean logit).

Reading features (top contexts, token lens, labels, persistence) is in :mod:`.features`; drawing a graph
is :func:`emocircuits.plots.plot_graph`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .transcoders import TranscoderSet


class AttributionError(ValueError):
    pass


def norm_weight(lm, norm) -> torch.Tensor:
    """The effective elementwise weight of an RMSNorm module (the layout's ``norm_offset + weight``: Gemma
    stores ``weight - 1``)."""
    return lm.layout.norm_offset + norm.weight.detach().float()


def _inv_rms(norm, x: torch.Tensor) -> torch.Tensor:
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    return torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)


@dataclass
class Context:
    """One prompt's real forward pass, frozen, with the transcoders' view of it."""

    lm: object
    tset: TranscoderSet
    ids: list[int]
    tokens: list[str]
    emb: torch.Tensor  # [T, d]
    pattern: list[torch.Tensor]  # per layer [H, T, T]
    s_in: list[torch.Tensor]  # per layer [T, 1]
    s_mid: list[torch.Tensor]
    s_attn: list[torch.Tensor | None]  # the post-attention norm's, where the layout has one (Gemma)
    s_fin: torch.Tensor  # [T, 1]
    x_in: list[torch.Tensor]  # what the transcoders read (mlp_in, or resid_mid for some published sets)
    mlp_out: list[torch.Tensor]
    logits: torch.Tensor  # [T, V] of the real model
    pos: list[torch.Tensor] = field(default_factory=list)  # active features per layer: positions
    feat: list[torch.Tensor] = field(default_factory=list)  # ... feature ids
    act: list[torch.Tensor] = field(default_factory=list)  # ... activations
    err: torch.Tensor | None = None  # [L, T, d]
    _w: dict | None = field(default=None, repr=False)  # weights of the linear forward, filled on first use

    @property
    def n_layers(self) -> int:
        return len(self.pattern)

    @property
    def n_tok(self) -> int:
        return len(self.ids)

    def offsets(self) -> np.ndarray:
        return np.cumsum([0] + [len(p) for p in self.pos])

    def feature_nodes(self) -> list[tuple[int, int, int, float]]:
        """Every active feature as ``(layer, position, feature, activation)`` in the model's order."""
        return [(la, p, f, a) for la in range(self.n_layers)
                for p, f, a in zip(self.pos[la].tolist(), self.feat[la].tolist(), self.act[la].tolist())]


def prepare(lm, tset: TranscoderSet, text: str) -> Context:
    """Run ``text`` once and freeze what the replacement model needs."""
    lm.need_weights("an attribution graph")
    tset.check(lm)
    missing = [la for la in range(lm.n_layers) if la not in tset]
    if missing:
        raise AttributionError(f"attribution needs a transcoder for every layer; missing {missing}")
    if not isinstance(text, str) or not text:
        raise AttributionError("text must be a non-empty string")
    hf = lm.hf
    enc = lm.encode([text])
    ids = enc["input_ids"][0].tolist()
    got: dict = {}
    hooks = []
    lay = lm.layout

    def keep(name, what="in"):
        def hook(mod, args, out):
            got[name] = (args[0] if what == "in" else (out[0] if isinstance(out, tuple) else out)).detach()[0].float()
        return hook

    for la, block in enumerate(hf.model.layers):
        # the residual stream into block 0 is the embedding as the model scales it (Gemma 2 scales it after
        # the embedding module, Gemma 3 inside it)
        hooks.append(block.input_layernorm.register_forward_hook(keep(f"in{la}")))
        hooks.append(lm.hf_part(la, lay.mlp_in_norm).register_forward_hook(keep(f"mid{la}")))
        if lay.attn_out_norm:
            hooks.append(lm.hf_part(la, lay.attn_out_norm).register_forward_hook(keep(f"attn{la}")))
        out_mod = lm.hf_part(la, lay.mlp_out_norm) if lay.mlp_out_norm else block.mlp
        hooks.append(out_mod.register_forward_hook(keep(f"out{la}", "out")))
        hooks.append(block.mlp.register_forward_hook(keep(f"mlpin{la}")))
    hooks.append(hf.model.norm.register_forward_hook(keep("fin")))
    # the unembedding's output: the logits before any soft-capping (Gemma 2), which the linear graph explains
    hooks.append(hf.get_output_embeddings().register_forward_hook(keep("logits", "out")))
    old_impl = hf.config._attn_implementation
    try:
        hf.set_attn_implementation("eager")
        with torch.no_grad():
            out = hf(input_ids=enc["input_ids"].to(lm.device), attention_mask=enc["attention_mask"].to(lm.device),
                     output_attentions=True, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        hf.set_attn_implementation(old_impl)
    L = lm.n_layers
    blocks = hf.model.layers
    ctx = Context(
        lm=lm, tset=tset, ids=ids, tokens=[lm.tokenizer.decode([i]) for i in ids], emb=got["in0"].cpu(),
        pattern=[a[0].detach().float().cpu() for a in out.attentions],
        s_in=[_inv_rms(blocks[la].input_layernorm, got[f"in{la}"]).cpu() for la in range(L)],
        s_mid=[_inv_rms(lm.hf_part(la, lay.mlp_in_norm), got[f"mid{la}"]).cpu() for la in range(L)],
        s_attn=[_inv_rms(lm.hf_part(la, lay.attn_out_norm), got[f"attn{la}"]).cpu() if lay.attn_out_norm else None
                for la in range(L)],
        s_fin=_inv_rms(hf.model.norm, got["fin"]).cpu(),
        x_in=[got[f"mid{la}" if tset.input_site == "resid_mid" else f"mlpin{la}"].cpu() for la in range(L)],
        mlp_out=[got[f"out{la}"].cpu() for la in range(L)],
        logits=got["logits"].cpu())
    errs = []
    for la in range(L):
        with torch.no_grad():
            f = tset[la].encode(ctx.x_in[la])
        f[0] = 0.0  # BOS: left to the error node
        nz = f.nonzero()
        ctx.pos.append(nz[:, 0])
        ctx.feat.append(nz[:, 1])
        ctx.act.append(f[nz[:, 0], nz[:, 1]])
        recon = _bias_rows(tset[la], ctx.n_tok) + tset[la].skip_term(ctx.x_in[la]).detach()
        for w in tset.writers(la):  # a cross-layer set: every earlier layer's features that reach this one
            dec = tset[w].decoder(la).detach().float()
            recon = recon.index_add(0, ctx.pos[w], ctx.act[w][:, None] * dec[ctx.feat[w]])
        errs.append(ctx.mlp_out[la] - recon)
    ctx.err = torch.stack(errs)
    return ctx


def _bias_rows(tc, n_tok: int) -> torch.Tensor:
    b = tc.b_dec.detach().float().expand(n_tok, -1).clone()
    b[0] = 0.0
    return b


def _weights(ctx: Context):
    """Per-layer tensors the linear forward needs (cached on the context)."""
    if ctx._w is not None:
        return ctx._w
    lm = ctx.lm
    lay = lm.layout
    n_v = lm.n_kv_heads * lm.head_dim  # a fused q/k/v projection keeps V in its last n_v rows
    ws = []
    for la, b in enumerate(lm.hf.model.layers):
        vp, op = lm.hf_part(la, lay.v_proj), lm.hf_part(la, lay.o_proj)
        Wv, bv = vp.weight.detach().float().cpu(), None if vp.bias is None else vp.bias.detach().float().cpu()
        if lay.v_fused:
            Wv, bv = Wv[-n_v:], None if bv is None else bv[-n_v:]
        ws.append(dict(
            w_in=norm_weight(lm, b.input_layernorm),
            w_mid=norm_weight(lm, lm.hf_part(la, lay.mlp_in_norm)),
            w_attn=norm_weight(lm, lm.hf_part(la, lay.attn_out_norm)) if lay.attn_out_norm else None,
            Wv=Wv, bv=bv,
            Wo=op.weight.detach().float().cpu(),
            bo=None if op.bias is None else op.bias.detach().float().cpu(),
            W_enc=ctx.tset[la].W_enc.detach().float(), b_enc=ctx.tset[la].b_enc.detach().float(),
            # (source layer, its decoder into this layer): the layer itself, and earlier ones in a cross-layer set
            decs=[(w, ctx.tset[w].decoder(la).detach().float()) for w in ctx.tset.writers(la)],
            bias=_bias_rows(ctx.tset[la], ctx.n_tok),
            W_skip=None if ctx.tset[la].W_skip is None else ctx.tset[la].W_skip.detach().float()))
    W_U = lm.hf.get_output_embeddings().weight.detach().float().cpu()
    ctx._w = dict(layers=ws, w_fin=norm_weight(lm, lm.hf.model.norm).cpu(), W_U=W_U,
                  reads_resid=ctx.tset.input_site == "resid_mid")
    return ctx._w


def linear_forward(ctx: Context, emb: torch.Tensor, feats: Sequence[torch.Tensor], err: torch.Tensor,
                   deltas: Sequence[torch.Tensor] | None = None, logit_dirs: torch.Tensor | None = None):
    """The replacement model, linear in its inputs.

    ``feats[l]`` are the activations of layer ``l``'s active features (held
    fixed: direct effects). With ``deltas`` the features are recomputed from
    their pre-activations and ``deltas[l]`` is added (total effects flow
    through them). Returns ``(preacts per layer, z_final [T, d], logits)``
    with ``logits = z_final[-1] @ logit_dirs.T`` when ``logit_dirs`` is given.
    """
    lm = ctx.lm
    w = _weights(ctx)
    H, n_kv, hd = lm.n_heads, lm.n_kv_heads, lm.head_dim
    T = ctx.n_tok
    h = emb
    pres, fs = [], []
    for la, lw in enumerate(w["layers"]):
        x = h * ctx.s_in[la] * lw["w_in"]
        v = F.linear(x, lw["Wv"], lw["bv"]).view(T, n_kv, hd).transpose(0, 1)
        v = v.repeat_interleave(H // n_kv, dim=0)
        a = (ctx.pattern[la] @ v).transpose(0, 1).reshape(T, H * hd)
        a = F.linear(a, lw["Wo"], lw["bo"])
        if lw["w_attn"] is not None:
            a = a * ctx.s_attn[la] * lw["w_attn"]
        h = h + a
        # what the transcoder reads: the normalised MLP input, or the residual stream itself
        m = h if w["reads_resid"] else h * ctx.s_mid[la] * lw["w_mid"]
        pos, feat = ctx.pos[la], ctx.feat[la]
        pre = (m[pos] * lw["W_enc"][feat]).sum(-1) + lw["b_enc"][feat]
        pres.append(pre)
        fs.append(feats[la] if deltas is None else pre + deltas[la])
        out = lw["bias"] + err[la]
        for src, dec in lw["decs"]:
            out = out.index_add(0, ctx.pos[src], fs[src][:, None] * dec[ctx.feat[src]])
        if lw["W_skip"] is not None:  # a linear path, like attention's: effects pass through it
            out = out + m @ lw["W_skip"].T
        h = h + out
    z = h * ctx.s_fin * w["w_fin"]
    logits = z[-1] @ logit_dirs.T if logit_dirs is not None else None
    return pres, z, logits


def edge_rows(ctx: Context, targets: Sequence[int], logit_dir: torch.Tensor | None = None):
    """Direct effects of every source on a batch of targets, by the replacement model's adjoint.

    ``targets`` index the concatenated active features (layer order); ``-1``
    is the logit along ``logit_dir``. The model is linear, so its transpose
    carries each target's sensitivity down the layers, all targets at once;
    at every layer the sensitivity is read off against the layer's feature
    activations and error terms (features held fixed: direct effects only).
    Returns ``(tokens [B, T], features [B, n_active], errors [B, L, T])``.
    """
    lm = ctx.lm
    w = _weights(ctx)
    H, n_kv, hd = lm.n_heads, lm.n_kv_heads, lm.head_dim
    T, d, L = ctx.n_tok, lm.d_model, ctx.n_layers
    offs = ctx.offsets()
    B = len(targets)
    layer_of = np.searchsorted(offs, np.asarray(targets), side="right") - 1
    g_h = torch.zeros(B, T, d)
    for b, t in enumerate(targets):
        if t == -1:
            g_h[b, -1] = logit_dir * w["w_fin"] * ctx.s_fin[-1]
    is_logit = np.asarray(targets) == -1
    e_feat = [torch.zeros(B, len(p)) for p in ctx.pos]
    e_err = torch.zeros(B, L, T)
    top = L - 1 if is_logit.any() else int(layer_of.max())
    for la in range(top, -1, -1):
        # only the targets at this layer or above (and the logit) have any sensitivity yet
        rows = torch.from_numpy(np.nonzero(is_logit | (layer_of >= la))[0])
        g = g_h[rows]
        n = len(rows)
        lw = w["layers"][la]
        pos, feat = ctx.pos[la], ctx.feat[la]
        # h_after = h_mid + bias + features (of this layer, and of earlier ones in a cross-layer set) + err
        # (+ skip(m))
        e_err[rows, la] = (g * ctx.err[la]).sum(-1)
        for src, dec in lw["decs"]:
            e_feat[src][rows] += (g[:, ctx.pos[src]] * dec[ctx.feat[src]]).sum(-1) * ctx.act[src]
        g_m = g @ lw["W_skip"] if lw["W_skip"] is not None else torch.zeros(n, T, d)
        for j, b in enumerate(rows.tolist()):
            if layer_of[b] == la and not is_logit[b]:
                i = int(targets[b]) - int(offs[la])
                g_m[j, int(pos[i])] += lw["W_enc"][int(feat[i])]
        g_mid = g + (g_m if w["reads_resid"] else g_m * ctx.s_mid[la] * lw["w_mid"])
        # h_mid = h + attention(h)
        g_a = g_mid * ctx.s_attn[la] * lw["w_attn"] if lw["w_attn"] is not None else g_mid
        g_z = (g_a @ lw["Wo"]).view(n, T, H, hd).transpose(1, 2)  # [n, H, T, hd]
        g_v = ctx.pattern[la].transpose(-1, -2) @ g_z
        g_v = g_v.view(n, n_kv, H // n_kv, T, hd).sum(2).transpose(1, 2).reshape(n, T, n_kv * hd)
        g_h[rows] = g_mid + (g_v @ lw["Wv"]) * ctx.s_in[la] * lw["w_in"]
    e_tok = (g_h * ctx.emb).sum(-1)
    return e_tok, torch.cat(e_feat, dim=1), e_err


def logit_direction(ctx: Context, token: int) -> torch.Tensor:
    """Unembedding row of ``token`` minus the mean row: the target is that logit minus the mean logit."""
    W_U = _weights(ctx)["W_U"]
    return W_U[token] - W_U.mean(0)


@dataclass
class Graph:
    """An attribution graph; ``adjacency[target, source]`` is a direct effect.

    Node order: ``features`` (kept active features), then one error node per
    (layer, position), then one node per token, then the logit.
    """

    tokens: list[str]
    target: str
    target_id: int
    features: list[tuple[int, int, int, float]]
    n_layers: int
    adjacency: np.ndarray
    influence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    check: dict = field(default_factory=dict)
    seconds: float = 0.0
    n_active: int = 0
    total_effect: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n_tok(self) -> int:
        return len(self.tokens)

    @property
    def n_nodes(self) -> int:
        return self.adjacency.shape[0]

    def error_index(self, layer: int, pos: int) -> int:
        return len(self.features) + layer * self.n_tok + pos

    def token_index(self, pos: int) -> int:
        return len(self.features) + self.n_layers * self.n_tok + pos

    @property
    def logit_index(self) -> int:
        return self.n_nodes - 1

    def label(self, i: int) -> str:
        nf, L, T = len(self.features), self.n_layers, self.n_tok
        if i < nf:
            la, p, f, _ = self.features[i]
            return f"L{la}/F{f}@{p}"
        if i < nf + L * T:
            la, p = divmod(i - nf, T)
            return f"err L{la}@{p}"
        if i < nf + L * T + T:
            return f"tok {self.tokens[i - nf - L * T]!r}@{i - nf - L * T}"
        return f"logit {self.target!r}"

    def node_xy(self, i: int) -> tuple[float, float]:
        """(position, layer) for drawing: tokens at layer -1, the logit above the last layer."""
        nf, L, T = len(self.features), self.n_layers, self.n_tok
        if i < nf:
            return self.features[i][1], self.features[i][0]
        if i < nf + L * T:
            la, p = divmod(i - nf, T)
            return p, la
        if i < nf + L * T + T:
            return i - nf - L * T, -1
        return T - 1, L


def attribution_graph(lm, tset: TranscoderSet, text: str, target: int | str | None = None,
                      max_features: int = 256, batch_size: int = 64, include: Sequence[tuple[int, int, int]] = (),
                      ctx: Context | None = None) -> Graph:
    """Direct effects between the most influential active features, error and token nodes and a logit.

    Features are ranked by their *total* effect on the target logit through
    the replacement model (one backward pass); the top ``max_features`` (plus
    ``include``, as ``(layer, position, feature)``) get a row of direct
    effects from every source. ``target`` is a token id, a string (its first
    token) or, by default, the model's top next token.
    """
    t0 = time.perf_counter()
    ctx = ctx or prepare(lm, tset, text)
    if target is None:
        target = int(ctx.logits[-1].argmax())
    elif isinstance(target, str):
        ids = lm.tokenizer.encode(target, add_special_tokens=False)
        if not ids:
            raise AttributionError(f"target {target!r} encodes to no token")
        target = ids[0]
    if not 0 <= int(target) < ctx.logits.shape[-1]:
        raise AttributionError(f"target token id {target} out of range 0..{ctx.logits.shape[-1] - 1}")
    L, T = ctx.n_layers, ctx.n_tok
    ldir = logit_direction(ctx, int(target))[None]
    offs = ctx.offsets()
    n_act = int(offs[-1])

    # 1) total effects on the logit, to choose the rows
    emb = ctx.emb.clone().requires_grad_(True)
    err = ctx.err.clone().requires_grad_(True)
    deltas = [torch.zeros(len(p), requires_grad=True) for p in ctx.pos]
    _, _, logit = linear_forward(ctx, emb, ctx.act, err, deltas=deltas, logit_dirs=ldir)
    g = torch.autograd.grad(logit[0], deltas)
    total = torch.cat([gi * a for gi, a in zip(g, ctx.act)]).detach().numpy()
    chosen = list(np.argsort(-np.abs(total), kind="stable")[:max_features])
    index = {(la, int(p), int(f)): int(offs[la]) + i for la in range(L)
             for i, (p, f) in enumerate(zip(ctx.pos[la].tolist(), ctx.feat[la].tolist()))}
    for node in include:
        node = tuple(int(v) for v in node)
        if node not in index:
            raise AttributionError(f"include: feature {node} (layer, position, feature) is not active in this prompt")
        if index[node] not in chosen:
            chosen.append(index[node])
    chosen = sorted(chosen)

    # 2) direct-effect rows for the chosen features and the logit
    rows = chosen + [n_act]
    with torch.no_grad():
        pres, _, logit = linear_forward(ctx, ctx.emb, ctx.act, ctx.err, logit_dirs=ldir)
        values = torch.cat(pres + [logit])[rows]
        zero_pres, _, zero_logit = linear_forward(ctx, torch.zeros_like(ctx.emb), [torch.zeros_like(a) for a in ctx.act],
                                                  torch.zeros_like(ctx.err), logit_dirs=ldir)
        const = torch.cat(zero_pres + [zero_logit])[rows]
    nf = len(chosen)
    N = nf + L * T + T + 1
    A = np.zeros((N, N), dtype=np.float32)
    sums = torch.zeros(len(rows))
    for start in range(0, len(rows), batch_size):
        part = rows[start:start + batch_size]
        with torch.no_grad():
            e_tok, e_feat, e_err = edge_rows(ctx, [t if t < n_act else -1 for t in part], ldir[0])
        sums[start:start + len(part)] = e_tok.sum(1) + e_err.sum((1, 2)) + e_feat.sum(1)
        r = np.arange(start, start + len(part))
        r = np.where(r < nf, r, N - 1)
        A[r[:, None], np.arange(nf)[None]] = e_feat[:, chosen].numpy()
        A[r, nf:nf + L * T] = e_err.reshape(len(part), -1).numpy()
        A[r, nf + L * T:nf + L * T + T] = e_tok.numpy()
    recon = const + sums
    diff = (recon - values).abs()
    check = {"max_abs_error": float(diff.max()), "max_value": float(values.abs().max()),
             "max_rel_error": float((diff / values.abs().clamp_min(1e-3)).max()),
             "logit_vs_model": float((logit[0] - (ctx.logits[-1][int(target)] - ctx.logits[-1].mean())).abs())}
    nodes = ctx.feature_nodes()
    graph = Graph(tokens=ctx.tokens, target=lm.tokenizer.decode([int(target)]), target_id=int(target),
                  features=[nodes[i] for i in chosen], n_layers=L, adjacency=A, check=check, n_active=n_act,
                  total_effect=total[chosen])
    graph.influence = influence(graph)
    graph.seconds = time.perf_counter() - t0
    return graph


def influence(graph: Graph) -> np.ndarray:
    """Each node's share of influence on the logit through every path (rows of |A| normalised to sum 1)."""
    W = np.abs(graph.adjacency).astype(np.float64)
    s = W.sum(1, keepdims=True)
    W = np.divide(W, s, out=np.zeros_like(W), where=s > 0)
    e = np.zeros(graph.n_nodes)
    e[graph.logit_index] = 1.0
    # x = e W (I - W)^-1  <=>  (I - W)^T x = (e W)^T ; W is nilpotent (a DAG), so I - W is invertible
    x = np.linalg.solve((np.eye(graph.n_nodes) - W).T, (e @ W))
    return x


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> dict:
    """Keep the features that carry ``node_threshold`` of the feature influence, and the edges among kept
    nodes that carry ``edge_threshold`` of the edge influence. Returns masks over nodes and edges."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0 < v <= 1:
            raise AttributionError(f"{name}={v}: expected a fraction in (0, 1]")
    nf = len(graph.features)
    infl = graph.influence
    keep = np.ones(graph.n_nodes, bool)
    order = np.argsort(-infl[:nf], kind="stable")
    cum = np.cumsum(infl[:nf][order]) / max(infl[:nf].sum(), 1e-12)
    n_keep = int(np.searchsorted(cum, node_threshold) + 1)
    keep[:nf] = False
    keep[order[:n_keep]] = True
    A = np.abs(graph.adjacency) * keep[:, None] * keep[None, :]
    weight = infl.copy()
    weight[graph.logit_index] = 1.0
    score = A * weight[:, None]
    flat = score.ravel()
    idx = np.argsort(-flat, kind="stable")
    csum = np.cumsum(flat[idx]) / max(flat.sum(), 1e-12)
    n_e = int(np.searchsorted(csum, edge_threshold) + 1)
    edges = np.zeros_like(flat, dtype=bool)
    edges[idx[:n_e]] = True
    edges &= flat > 0
    edges = edges.reshape(A.shape)
    used = edges.any(0) | edges.any(1)
    used[graph.logit_index] = True
    return {"nodes": keep & used, "edges": edges, "features_kept": n_keep}


# ---------------------------------------------------------------------------
# growing a circuit from a seed feature (paper C)


def direct_effects_from(ctx: Context, source: tuple[int, int, int]) -> torch.Tensor:
    """Direct effect of one active feature on every active feature's pre-activation, ``[n_active]``.

    The replacement model is linear, so this is the difference of two forward
    passes: with only ``source`` switched on, and with nothing on.
    """
    offs = ctx.offsets()
    la, p, f = source
    hit = ((ctx.pos[la] == p) & (ctx.feat[la] == f)).nonzero()
    if len(hit) == 0:
        raise AttributionError(f"source feature {source} (layer, position, feature) is not active")
    zeros = [torch.zeros_like(a) for a in ctx.act]
    with torch.no_grad():
        base, _, _ = linear_forward(ctx, torch.zeros_like(ctx.emb), zeros, torch.zeros_like(ctx.err))
        on = [z.clone() for z in zeros]
        on[la][hit[0, 0]] = ctx.act[la][hit[0, 0]]
        moved, _, _ = linear_forward(ctx, torch.zeros_like(ctx.emb), on, torch.zeros_like(ctx.err))
    eff = torch.cat(moved) - torch.cat(base)
    eff[int(offs[la]) + int(hit[0, 0])] = 0.0
    return eff


def grow(ctx: Context, seed: tuple[int, int, int], k: int = 5, steps: int = 3,
         relative: bool = False) -> list[list[tuple[int, int, int, float]]]:
    """Paper C's growth: ``steps`` times, add the ``k`` active features with the largest summed positive
    direct effect (activation x edge weight) from the features added in the step before.

    With ``relative=True`` a target is ranked by the effect divided by its own
    activation (the share of its input the sources provide), so features
    with huge activations (the last layers' on smollm2) do not win on scale
    alone. Returns the seed and each step's additions as
    ``(layer, position, feature, score)``.
    """
    if k < 1 or steps < 0:
        raise AttributionError(f"k={k}, steps={steps}: expected k >= 1 and steps >= 0")
    nodes = ctx.feature_nodes()
    key = [(la, p, f) for la, p, f, _ in nodes]
    index = {n: i for i, n in enumerate(key)}
    seed = tuple(int(v) for v in seed)
    if seed not in index:
        raise AttributionError(f"seed {seed} (layer, position, feature) is not active in this prompt")
    chosen = {seed}
    out = [[(*seed, float(nodes[index[seed]][3]))]]
    frontier = [seed]
    for _ in range(steps):
        score = sum(direct_effects_from(ctx, s) for s in frontier)
        if relative:
            score = score / torch.cat(ctx.act).clamp_min(1e-6)
        for n in chosen:
            score[index[n]] = float("-inf")
        top = torch.topk(score, min(k, len(score)))
        picks = [(key[int(i)], float(v)) for v, i in zip(top.values, top.indices) if float(v) > 0]
        if not picks:
            break
        out.append([(*n, v) for n, v in picks])
        frontier = [n for n, _ in picks]
        chosen.update(frontier)
    return out
