"""Pooling, batched capture and an on-disk cache (chapter 00).

A *site* (``"{kind}.{layer}"``, e.g. ``"resid_post.5"``) names a place in a decoder block; the kinds, their
order and how each is read and written inside a trace are in :mod:`.sites`, whose names are re-exported here.
"""

from __future__ import annotations

import operator
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from .cache import atomic_write, cache_dir, code_version, stable_hash
from .interventions import apply_all, resolve
from .profiling import count, timed
from .sites import SITE_KINDS, Site, all_layers, parse_site, parse_sites, read_site, site_width, split_heads, write_site  # noqa: F401 (re-exported)

POOLINGS = ("last_prompt_token", "mean_all", "mean_response", "none")


# ---------------------------------------------------------------------------
# pooling


def pool(x: torch.Tensor, mask: torch.Tensor, pooling: str, span_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pool ``[batch, tokens, width]`` over tokens.

    ``mask`` marks real (non-padding) tokens. ``last_prompt_token`` takes each
    row's last real token (left or right padding), ``mean_all`` averages the
    real tokens, ``mean_response`` averages the tokens in ``span_mask``.
    """
    if pooling == "last_prompt_token":
        idx = last_index(mask)
        return x[torch.arange(x.shape[0], device=x.device), idx]
    if pooling == "mean_all":
        w = mask.to(x.dtype)
    elif pooling == "mean_response":
        if span_mask is None:
            raise ValueError("pooling='mean_response' needs response_starts")
        w = (span_mask & mask.bool()).to(x.dtype)
    else:
        raise ValueError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS[:3])}")
    return (x * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row of an attention mask."""
    t = mask.shape[1]
    ar = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), ar, torch.full_like(ar, -1)).max(1).values


def response_mask(offsets: torch.Tensor, mask: torch.Tensor, starts: Sequence[int]) -> torch.Tensor:
    """Tokens whose first character lies at or after each row's response start."""
    st = torch.as_tensor(list(starts), dtype=torch.long)[:, None]
    tok_start = offsets[..., 0]
    has_text = offsets[..., 1] > offsets[..., 0]
    return (tok_start >= st) & has_text & mask.bool()


# ---------------------------------------------------------------------------
# capture


# the modules whose code computes a cached capture (reading sites and pooling here; templates, tokenising and
# loading in models, the bundled weights' conversion in bundled): their source is part of the cache key
CACHE_CODE = ("activations", "sites", "models", "bundled")  # the modules whose code a cached capture depends on


def _model_key(lm) -> dict:
    return {"model": lm.name, "dtype": str(lm.dtype), "n_layers": lm.n_layers, "d_model": lm.d_model,
            "code": code_version(*CACHE_CODE)}


def check_batch_size(batch_size) -> None:
    """Refuse a batch size that is not an int >= 1 (NumPy ints are ints; a bool is not), naming it."""
    try:
        ok = not isinstance(batch_size, bool) and operator.index(batch_size) >= 1
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"batch_size={batch_size!r}: expected an int >= 1 (texts per forward pass)")


def capture(
    lm,
    texts: Sequence[str],
    sites: str | Iterable[str | Site],
    pooling: str | Sequence[str] = "last_prompt_token",
    response_starts: Sequence[int] | None = None,
    batch_size: int = 16,
    max_length: int | None = 512,
    cache: bool | str = False,
    progress: bool = True,
    padding_side: str = "left",
    interventions: Sequence = (),
) -> dict[str, torch.Tensor]:
    """Run ``texts`` through the model and return pooled activations per site.

    Returns ``{str(site): tensor}``; with pooling the tensors are
    ``[n_texts, width]`` in float32 on the CPU (``attn_z`` is
    ``[n_texts, n_heads, head_dim]``). With ``pooling="none"`` each value is a
    list of ``[tokens, width]`` tensors, one per text, padding removed.

    ``response_starts`` (character offsets into each text) marks where the
    response begins, for ``mean_response``. Texts are sorted by length into
    batches to waste little padding; results come back in the input order.
    With ``cache=True`` the result is stored under the cache folder, keyed
    by model, texts, sites, pooling, response starts and truncation. With ``cache="memory"``
    each text's pooled rows are kept on ``lm`` (up to
    :data:`MEMORY_CACHE_BYTES`, the least recently used texts dropped first), and a later
    call runs only the texts it has not seen at every asked site and
    pooling: the probes of chapter 03 read the same pairs at several layers
    through several functions. A kept row came from a batch of other texts,
    so it differs from a fresh capture as captures in different batches
    differ (the last bits of float32 on a CPU; more in bfloat16 on a GPU).
    :func:`forget_captures` empties the memory (do so after changing the
    model's weights in place).

    ``interventions`` (:class:`~emocircuits.interventions.Add` or ``Set``) act
    during the forward pass; a site downstream of them, or at the same site,
    is read after they act. Captures under interventions are not cached.

    ``pooling`` may also be a tuple of poolings (not ``"none"``): one forward
    pass then gives ``{pooling: {site: tensor}}``, each pooled as above.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of str, not one str")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError("texts must be a non-empty list of non-empty strings")
    multi = not isinstance(pooling, str)
    poolings = tuple(pooling) if multi else (pooling,)
    if not poolings or any(p not in POOLINGS for p in poolings) or (multi and "none" in poolings):
        raise ValueError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS)}, "
                         f"or a tuple of {', '.join(POOLINGS[:3])}")
    if "mean_response" in poolings:
        if response_starts is None or len(response_starts) != len(texts):
            raise ValueError("pooling='mean_response' needs response_starts, one character offset per text")
    check_batch_size(batch_size)
    site_list = sorted(parse_sites(sites, lm.n_layers), key=lambda s: s.order)
    names = [str(s) for s in site_list]
    items = []
    if interventions:
        items = resolve(lm, interventions)
        if cache:
            raise ValueError(f"cache={cache!r} is not supported with interventions "
                             "(they are not part of the cache key)")

    if cache not in (False, True, "memory"):
        raise ValueError(f"cache={cache!r}: expected False, True (on disk) or 'memory'")
    if cache and "none" in poolings:
        raise ValueError(f"cache={cache!r} is supported for pooled captures only")
    if cache == "memory":
        return _capture_remembered(lm, texts, site_list, poolings, multi, response_starts,
                                   dict(batch_size=batch_size, max_length=max_length, progress=progress,
                                        padding_side=padding_side))
    key = None
    if cache:
        key = stable_hash({**_model_key(lm), "texts": texts, "sites": names,
                           "pooling": list(poolings) if multi else pooling,
                           "starts": list(response_starts or []), "max_length": max_length,
                           "padding_side": padding_side})
        path = cache_dir("activations") / f"{lm.name}-{key}.safetensors"
        if path.exists():
            from safetensors.torch import load_file

            flat = load_file(path)
            if multi:
                return {p: {n: flat[f"{p}|{n}"] for n in names} for p in poolings}
            return {n: flat[n] for n in names}  # in forward order, as a fresh capture gives them (not the file's)

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks: dict[tuple[str, str], list] = {(p, n): [] for p in poolings for n in names}
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=f"capture {lm.name}", disable=not progress, leave=False):
        batch_texts = [texts[i] for i in idx]
        enc = lm.encode(batch_texts, padding_side=padding_side, max_length=max_length,
                        return_offsets="mean_response" in poolings)
        offsets = enc.pop("offset_mapping", None)
        mask = enc["attention_mask"]
        span = None
        if "mean_response" in poolings:
            span = response_mask(offsets, mask, [response_starts[i] for i in idx])
            if (span.sum(1) == 0).any():
                raise _NoReplyTokens([idx[j] for j in torch.nonzero(span.sum(1) == 0).flatten().tolist()],
                                     max_length)
        got = _run_batch(lm, enc, site_list, poolings, mask, span, items)
        for k in chunks:
            chunks[k].append(got[k])

    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.as_tensor(order)] = torch.arange(len(order))
    out: dict[str, dict] = {p: {} for p in poolings}
    for p in poolings:
        for s, n in zip(site_list, names):
            if p == "none":
                flat = [row for part in chunks[p, n] for row in part]
                out[p][n] = [flat[j] for j in inverse.tolist()]
                continue
            val = torch.cat(chunks[p, n])[inverse]
            if s.kind == "attn_z":
                val = split_heads(val, lm.n_heads)
            out[p][n] = val.contiguous()
    if key is not None:
        from safetensors.torch import save_file

        flat = {f"{p}|{n}": v for p in poolings for n, v in out[p].items()} if multi else out[poolings[0]]
        atomic_write(path, lambda f: save_file(flat, str(f), metadata={"model": lm.name,
                                                                        "pooling": ",".join(poolings)}))
    return out if multi else out[poolings[0]]


MEMORY_CACHE_BYTES = 256 * 2**20  # what capture(..., cache="memory") keeps per model, at most


class _Remembered:
    """Pooled rows per text, least recently used first: ``rows[text key][(pooling, site)] = tensor``."""

    def __init__(self):
        self.rows: dict[tuple, dict] = {}
        self.nbytes = 0

    def add(self, key: tuple, got: dict) -> None:
        row = self.rows.pop(key, {})  # re-inserted: now the newest
        for k, v in got.items():
            if k in row:
                self.nbytes -= row[k].numel() * row[k].element_size()
            row[k] = v
            self.nbytes += v.numel() * v.element_size()
        self.rows[key] = row

    def touch(self, key: tuple) -> None:
        self.rows[key] = self.rows.pop(key)  # just read: now the newest

    def trim(self, limit: int) -> None:
        while self.nbytes > limit and self.rows:
            old = self.rows.pop(next(iter(self.rows)))
            self.nbytes -= sum(v.numel() * v.element_size() for v in old.values())


def forget_captures(lm) -> None:
    """Empty what ``capture(..., cache="memory")`` has kept for ``lm``."""
    lm._captured = None


def _capture_remembered(lm, texts: list[str], site_list: list[Site], poolings: tuple[str, ...], multi: bool,
                        response_starts, kwargs: dict):
    """``capture`` with ``cache="memory"``: run only the texts not yet kept at every asked (pooling, site).

    A text's rows are kept under (text, truncation, padding side); each row under (pooling, site, start),
    where the start counts for ``mean_response`` only.
    """
    if getattr(lm, "_captured", None) is None:
        lm._captured = _Remembered()
    memo, names = lm._captured, [str(s) for s in site_list]
    starts = [int(response_starts[i]) if "mean_response" in poolings else None for i in range(len(texts))]
    keys = [(t, kwargs["max_length"], kwargs["padding_side"]) for t in texts]

    def inner(p: str, n: str, start) -> tuple:
        return p, n, start if p == "mean_response" else None

    asks = list(zip(keys, starts))
    todo = list(dict.fromkeys(a for a in asks
                              if not all(inner(p, n, a[1]) in memo.rows.get(a[0], ()) for p in poolings
                                         for n in names)))
    if todo:
        try:
            fresh = capture(lm, [k[0] for k, _ in todo], site_list, pooling=poolings,
                            response_starts=[st for _, st in todo] if "mean_response" in poolings else None, **kwargs)
        except _NoReplyTokens as err:  # name the caller's texts, not this call's
            bad = [i for i, a in enumerate(asks) if a in {todo[j] for j in err.indices}]
            raise _NoReplyTokens(bad, kwargs["max_length"]) from None
        for j, (k, st) in enumerate(todo):
            memo.add(k, {inner(p, n, st): fresh[p][n][j].clone() for p in poolings for n in names})
    out = {p: {n: torch.stack([memo.rows[k][inner(p, n, st)] for k, st in asks]) for n in names} for p in poolings}
    for k in dict.fromkeys(keys):
        memo.touch(k)
    memo.trim(MEMORY_CACHE_BYTES)
    return out if multi else out[poolings[0]]


class _NoReplyTokens(ValueError):
    """Texts (by position) with no token after their response start."""

    def __init__(self, indices: list[int], max_length):
        self.indices = indices
        super().__init__(f"texts {indices} have no tokens after their response_starts "
                         f"(too short, or truncated at max_length={max_length})")


@timed("capture")
def _run_batch(lm, enc: dict, site_list: list[Site], poolings: tuple[str, ...], mask: torch.Tensor,
               span: torch.Tensor | None, items: Sequence = ()) -> dict:
    """One traced forward; pools inside the trace so only pooled tensors are kept."""
    count(forward=int(mask.sum()))
    got: dict = {}
    dev = lm.device
    enc = {k: v.to(dev) for k, v in enc.items()}
    mask_d = mask.to(dev)
    span_d = span.to(dev) if span is not None else None
    if items:
        last = max(s.order for s in site_list)
        items = [(s, iv) for s, iv in items if s.order <= last]
    with torch.inference_mode(), lm.nn.trace(enc, **lm.remote_kwargs) as tracer:
        values = apply_all(lm, items, 0, site_list, attention_mask=enc["attention_mask"]) if items else None
        for s in site_list:
            x = values[str(s)] if values is not None else read_site(lm, s)
            for p in poolings:
                got[p, str(s)] = x if p == "none" else pool(x, mask_d, p, span_d).float().cpu()
        # nothing downstream is needed: skip the remaining layers and the unembedding
        tracer.stop()
    if "none" in poolings:
        m = mask.bool()
        return {k: [x[r][m[r]].float().cpu() for r in range(x.shape[0])] for k, x in got.items()}
    return got
