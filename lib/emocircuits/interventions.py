"""Interventions: what a chapter does to a model's activations, and applying them inside a trace.

:class:`Add` (a vector), :class:`Set` (a value), :class:`Scale` (a factor) and :class:`Transcode` (a
transcoder's reconstruction, with features clamped) each name a site and the token positions they act on;
:func:`resolve` checks them against a model and :func:`apply_all` applies them, in execution order, inside
an ``lm.nn.trace`` or ``lm.nn.generate`` block. Forward passes and generation are in :mod:`.generation`;
capture under interventions in :mod:`.activations`.

``positions`` says where in the sequence an intervention acts:

``"all"``         every prompt and every generated position
``"prompt"``      the prompt's positions only (the first forward pass)
``"generated"``   the positions of generated tokens only (so the first new
                  token, predicted from the prompt, is not affected)
``"last:k"``      the last ``k`` prompt positions and every generated one
                  (paper B's "last position, every step" is ``"last:1"``)
``"last_prompt"`` the prompt's final position only, nothing generated
                  (paper C's clamp "in the final token of the current prompt")

Generation pads on the left, so "the last k prompt positions" are the last
``k`` columns of the first forward pass.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .sites import Site, parse_site, read_site, site_width, split_heads, write_site

_POS_RE = re.compile(r"^last:(\d+)$")


POSITIONS = ("all", "prompt", "generated", "last_prompt")  # and "last:k"; the module's docstring says what each means


def check_positions(positions: str) -> str:
    if positions in POSITIONS or (isinstance(positions, str) and _POS_RE.match(positions) and int(positions[5:]) > 0):
        return positions
    raise ValueError(f"positions={positions!r}: expected 'all', 'prompt', 'generated', 'last_prompt' or 'last:k' "
                     f"with k >= 1")


@dataclass
class Add:
    """Add ``alpha * vector`` at ``site``."""

    site: str | Site
    vector: torch.Tensor
    alpha: float = 1.0
    positions: str = "all"

    def __post_init__(self):
        self.positions = check_positions(self.positions)
        self.vector = torch.as_tensor(self.vector)
        if self.vector.ndim != 1:
            raise ValueError(f"Add.vector must be 1-D, got shape {tuple(self.vector.shape)}")


@dataclass
class Set:
    """Set components of ``site`` to ``value``.

    ``index`` lists neurons (``mlp_act``), heads (``attn_z``) or dimensions
    (other sites). ``value`` is a number, or one value per index (per head:
    a ``[len(index), head_dim]`` tensor). ``value=0`` is zero-ablation.
    """

    site: str | Site
    index: Sequence[int]
    value: float | torch.Tensor = 0.0
    positions: str = "all"
    _index: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        _init_components(self)


def _init_components(iv) -> None:
    """Shared checks of :class:`Set` and :class:`Scale`: positions, and a non-empty 1-D index."""
    iv.positions = check_positions(iv.positions)
    iv._index = torch.as_tensor(list(iv.index), dtype=torch.long)
    if iv._index.ndim != 1 or iv._index.numel() == 0:
        raise ValueError(f"{type(iv).__name__}.index must be a non-empty list of ints")


@dataclass
class Scale:
    """Multiply components of ``site`` by ``factor`` (neurons at ``mlp_act``, heads at ``attn_z``)."""

    site: str | Site
    index: Sequence[int]
    factor: float = 1.0
    positions: str = "all"
    _index: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        _init_components(self)


@dataclass
class Transcode:
    """Act on ``mlp_out`` of a transcoder's layer through its features (chapter 05).

    ``splice=True`` replaces the MLP's output by the transcoder's prediction
    (the error term dropped). ``clamp={feature: value}`` keeps the MLP's output
    and moves each listed feature from its current activation to ``value``:
    ``mlp_out += (value - f) * W_dec[feature]``. Each text's first token in
    the first forward pass (an attention sink transcoders are not trained
    on) is left alone: the first column, or, when the batch's attention mask
    is given (a left-padded batch), each row's first real token.

    Cross-layer transcoders: a clamp also writes ``(value - f)`` through the
    feature's decoders into every later layer it reaches, and a splice adds
    what the ``feeds`` (the set's transcoders of earlier layers that write
    into this one) predict; :meth:`TranscoderSet.splices` fills them in.
    """

    transcoder: object
    clamp: dict | None = None
    splice: bool = False
    positions: str = "all"
    feeds: tuple = ()

    def __post_init__(self):
        self.positions = check_positions(self.positions)
        cfg = getattr(self.transcoder, "cfg", None)
        if cfg is None:
            raise TypeError(f"Transcode.transcoder must be a Transcoder, got {type(self.transcoder).__name__}")
        if not self.splice and not self.clamp:
            raise ValueError("Transcode needs clamp={feature: value} or splice=True")
        self.feeds = tuple(self.feeds)
        bad_feeds = [getattr(getattr(t, "cfg", None), "layer", t) for t in self.feeds
                     if not hasattr(t, "writes_to") or not t.writes_to(cfg.layer) or t.cfg.layer == cfg.layer]
        if bad_feeds:
            raise ValueError(f"Transcode.feeds {bad_feeds}: expected transcoders of earlier layers that write "
                             f"into layer {cfg.layer}")
        if self.feeds and not self.splice:
            raise ValueError("Transcode.feeds only serve splice=True")
        self.clamp = {int(k): float(v) for k, v in (self.clamp or {}).items()}
        bad = [k for k in self.clamp if not 0 <= k < cfg.n_features]
        if bad:
            raise ValueError(f"Transcode.clamp features {bad} out of range 0..{cfg.n_features - 1}")

    @property
    def site(self) -> str:
        return f"mlp_out.{self.transcoder.cfg.layer}"

    @property
    def sources(self) -> list[Site]:
        """The transcoder inputs this intervention reads (its own, and its feeds')."""
        return [Site(t.cfg.input_site, t.cfg.layer) for t in (self.transcoder, *self.feeds)]


@dataclass
class _CarryClamp:
    """A cross-layer clamp's write into a later layer (made by :func:`resolve`, never by hand)."""

    clamp: Transcode
    layer: int

    @property
    def positions(self) -> str:
        return self.clamp.positions

    @property
    def site(self) -> str:
        return f"mlp_out.{self.layer}"


def resolve(lm, interventions) -> list[tuple[Site, object]]:
    """Check ``interventions`` against ``lm`` and return ``(site, intervention)`` pairs in execution order
    (a cross-layer clamp adds its writes into later layers); what :func:`apply_all` takes."""
    items = []
    for iv in interventions:
        if not isinstance(iv, (Add, Set, Scale, Transcode)):
            raise TypeError(f"interventions must be Add, Set, Scale or Transcode, got {type(iv).__name__}")
        site = parse_site(iv.site, lm.n_layers)
        if isinstance(iv, Transcode) and iv.transcoder.cfg.d_model != lm.d_model:
            raise ValueError(f"Transcode: transcoder has d_model={iv.transcoder.cfg.d_model}, {lm.name} has {lm.d_model}")
        width = site_width(lm, site)
        if isinstance(iv, Add) and iv.vector.shape[0] != width:
            raise ValueError(f"Add.vector has {iv.vector.shape[0]} dims but site {site} has {width}")
        if isinstance(iv, (Set, Scale)):
            limit = lm.n_heads if site.kind == "attn_z" else width
            if iv._index.min() < 0 or iv._index.max() >= limit:
                raise ValueError(f"Set.index out of range for {site}: expected 0..{limit - 1}")
        items.append((site, iv))
        if isinstance(iv, Transcode) and iv.clamp:
            tc = iv.transcoder
            carries = iv.__dict__.setdefault("_carries", {})  # one object per layer, so batched rows share it
            for la in range(tc.cfg.layer + 1, min(tc.cfg.layer + tc.cfg.reach, lm.n_layers)):
                items.append((Site("mlp_out", la), carries.setdefault(la, _CarryClamp(iv, la))))
    items.sort(key=lambda t: t[0].order)
    return items


def _position_slice(positions: str, step: int, n_tok: int) -> slice | None:
    """Which token columns of this forward pass the intervention touches."""
    if positions == "all":
        return slice(None)
    if positions == "prompt":
        return slice(None) if step == 0 else None
    if positions == "generated":
        return None if step == 0 else slice(None)
    if positions == "last_prompt":
        return slice(max(n_tok - 1, 0), None) if step == 0 else None
    k = int(positions[5:])
    return slice(max(n_tok - k, 0), None) if step == 0 else slice(None)


def _transcoder_like(iv: Transcode, x: torch.Tensor, tc=None):
    """A transcoder of the intervention on ``x``'s device and dtype (a copy made once, when they differ)."""
    tc = iv.transcoder if tc is None else tc
    if tc.W_dec.device == x.device and tc.W_dec.dtype == x.dtype:
        return tc
    casts = iv.__dict__.setdefault("_casts", {})
    key = (id(tc), x.device, x.dtype)
    if key not in casts:
        casts[key] = copy.deepcopy(tc).to(device=x.device, dtype=x.dtype)
    return casts[key]


def _features(iv: Transcode, t, x: torch.Tensor, srcs: dict, carry: dict) -> torch.Tensor:
    """``t``'s features on its input, encoded once per pass: a cross-layer set's splices of later layers reuse
    them (``carry`` lives for one :func:`apply_all`)."""
    key = ("features", id(t), iv.positions)
    if key not in carry:
        carry[key] = _transcoder_like(iv, x, t).encode(srcs[t.cfg.layer])
    return carry[key]


def _transcode(iv: Transcode, x: torch.Tensor, srcs: dict, carry: dict) -> torch.Tensor:
    tc = _transcoder_like(iv, x)
    layer = tc.cfg.layer
    f = _features(iv, iv.transcoder, x, srcs, carry)  # once, for splicing and clamping alike
    if iv.splice:
        x = tc.decode(f) + tc.skip_term(srcs[layer])
        for feed in iv.feeds:
            x = x + _features(iv, feed, x, srcs, carry) @ _transcoder_like(iv, x, feed).decoder(layer)
    if iv.clamp:
        idx = torch.tensor(list(iv.clamp), device=x.device)
        target = torch.tensor(list(iv.clamp.values()), device=x.device, dtype=x.dtype)
        delta = target - f[..., idx]
        carry[id(iv)] = (tc, idx, delta)  # for the later layers a cross-layer feature writes to
        x = x + delta @ tc.W_dec[idx]
    return x


def _apply(lm, site: Site, iv, step: int, x: torch.Tensor | None = None,
           srcs: dict | None = None, rows: torch.Tensor | None = None, carry: dict | None = None,
           sink: torch.Tensor | None = None) -> torch.Tensor:
    """Read the site (or take ``x``), change it at the chosen columns, write it back (inside a trace).

    Returns the site's value after the change, so several interventions at one
    site compose and a capture at that site sees the changed value. ``rows``
    (a boolean mask over the batch) limits the change to those rows.
    """
    x = read_site(lm, site) if x is None else x
    cols = _position_slice(iv.positions, step, x.shape[1])
    if cols is None:
        return x
    new = x.clone()
    carry = {} if carry is None else carry
    keep_sink = isinstance(iv, (Transcode, _CarryClamp)) and step == 0 and (cols.start or 0) == 0
    if keep_sink and sink is None:
        cols = slice(1, None)  # transcoders leave the first token (attention sink) alone
    if isinstance(iv, Transcode):
        new[:, cols] = _transcode(iv, x[:, cols], {la: v[:, cols] for la, v in (srcs or {}).items()}, carry)
    elif isinstance(iv, _CarryClamp):
        tc, idx, delta = carry[id(iv.clamp)]
        new[:, cols] += delta @ tc.decoder(iv.layer)[idx]
    elif isinstance(iv, Add):
        new[:, cols] += iv.alpha * iv.vector.to(device=x.device, dtype=x.dtype)
    elif isinstance(iv, Scale):
        idx = iv._index.to(x.device)
        if site.kind == "attn_z":
            heads = split_heads(new, lm.n_heads)
            heads[:, cols, idx] = heads[:, cols, idx] * iv.factor
            new = heads.reshape(x.shape)
        else:
            new[:, cols, idx] = new[:, cols, idx] * iv.factor
    elif site.kind == "attn_z":
        heads = split_heads(new, lm.n_heads)
        val = torch.as_tensor(iv.value, dtype=x.dtype, device=x.device)
        if val.ndim == 1 and val.numel() == lm.head_dim * len(iv._index):
            val = val.reshape(len(iv._index), lm.head_dim)
        heads[:, cols, iv._index.to(x.device)] = val
        new = heads.reshape(x.shape)
    else:
        val = torch.as_tensor(iv.value, dtype=x.dtype, device=x.device)
        new[:, cols, iv._index.to(x.device)] = val
    if keep_sink and sink is not None:  # each row's first real token keeps its value
        b = torch.arange(x.shape[0], device=x.device)
        new[b, sink.to(x.device)] = x[b, sink.to(x.device)]
    if rows is not None:
        new = torch.where(rows.to(x.device).view(-1, *([1] * (x.ndim - 1))), new, x)
    write_site(lm, site, new)
    return new


def sink_columns(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's first real token (the attention sink): its column in a padded batch, ``[batch]``."""
    return attention_mask.long().argmax(dim=1)


def apply_all(lm, items, step: int = 0, reads: Sequence[Site] = (), attention_mask: torch.Tensor | None = None
              ) -> dict:
    """Apply resolved interventions in execution order and read ``reads`` on the way (inside a trace).

    ``items`` are ``(site, intervention)`` or ``(site, intervention, rows)``
    with ``rows`` a boolean mask over the batch (see :func:`emocircuits.steering._rows_items`).
    Several interventions at one site act one after the other on the same
    value. A read at an intervened site sees the changed value. Returns
    ``{str(site): value}`` for ``reads``. ``attention_mask`` (of a padded
    batch) tells transcoder interventions where each row's first token is; only the first pass (step 0)
    reads it.
    """
    first_pass = attention_mask is not None and step == 0  # later passes read only their new tokens
    sink = sink_columns(attention_mask) if first_pass else None
    if first_pass and not bool(attention_mask[:, -1].all()):
        last = sorted({it[1].positions for it in items if str(getattr(it[1], "positions", "")).startswith("last")})
        if last:  # in a right-padded batch the last column is a pad for every shorter text
            raise ValueError(f"positions={last[0]!r} acts on each text's final tokens and needs a left-padded batch "
                             "(padding_side='left'); this batch is right-padded")
    items = [it if len(it) == 3 else (*it, None) for it in items]
    ins = {src for _, iv, _ in items if isinstance(iv, Transcode) for src in iv.sources}
    events = sorted([(s.order, 0, s, iv, rows) for s, iv, rows in items]
                    + [(s.order, 1, s, None, None) for s in reads]
                    + [(s.order, 2, s, None, None) for s in ins], key=lambda e: (e[0], e[1]))
    current: dict = {}
    out: dict = {}
    sources: dict = {}
    carry: dict = {}  # this pass's transcoder features, and what each cross-layer clamp moved, for later layers
    for _, kind, site, iv, rows in events:
        if kind == 2:  # a transcoder's input, read where the model computes it
            sources[site.layer] = read_site(lm, site)
        elif kind == 1:
            out[str(site)] = current.get(site, None)
            if out[str(site)] is None:
                out[str(site)] = read_site(lm, site)
        else:
            srcs = {s.layer: sources[s.layer] for s in iv.sources} if isinstance(iv, Transcode) else None
            current[site] = _apply(lm, site, iv, step, current.get(site), srcs, rows, carry, sink)
    return out
