"""Interventions during a forward pass or generation (chapter 00; sweeps in chapter 06).

Two kinds of intervention, both applied at a named site (see
:mod:`emocircuits.activations`):

* :class:`Add` adds ``alpha * vector`` to the site, like a steering vector;
* :class:`Set` sets chosen components (MLP neurons at ``mlp_act``, heads at
  ``attn_z``, or dimensions of any other site) to given values, like an
  ablation or a clamp.

``positions`` says where in the sequence an intervention acts:

``"all"``        every prompt and every generated position
``"prompt"``     the prompt's positions only (the first forward pass)
``"generated"``  the positions of generated tokens only (so the first new
                 token, predicted from the prompt, is not affected)
``"last:k"``     the last ``k`` prompt positions and every generated one
                 (paper B's "last position, every step" is ``"last:1"``)

Generation pads on the left, so "the last k prompt positions" are the last
``k`` columns of the first forward pass.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .activations import Site, parse_site, read_site, site_width, split_heads, write_site

_POS_RE = re.compile(r"^last:(\d+)$")


def _check_positions(positions: str) -> str:
    if positions in ("all", "prompt", "generated") or (_POS_RE.match(positions) and int(positions[5:]) > 0):
        return positions
    raise ValueError(f"positions={positions!r}: expected 'all', 'prompt', 'generated' or 'last:k' with k >= 1")


@dataclass
class Add:
    """Add ``alpha * vector`` at ``site``."""

    site: str | Site
    vector: torch.Tensor
    alpha: float = 1.0
    positions: str = "all"

    def __post_init__(self):
        self.positions = _check_positions(self.positions)
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
        self.positions = _check_positions(self.positions)
        self._index = torch.as_tensor(list(self.index), dtype=torch.long)
        if self._index.ndim != 1 or self._index.numel() == 0:
            raise ValueError("Set.index must be a non-empty list of ints")


def _resolve(lm, interventions) -> list[tuple[Site, object]]:
    items = []
    for iv in interventions:
        if not isinstance(iv, (Add, Set)):
            raise TypeError(f"interventions must be Add or Set, got {type(iv).__name__}")
        site = parse_site(iv.site, lm.n_layers)
        width = site_width(lm, site)
        if isinstance(iv, Add) and iv.vector.shape[0] != width:
            raise ValueError(f"Add.vector has {iv.vector.shape[0]} dims but site {site} has {width}")
        if isinstance(iv, Set):
            limit = lm.n_heads if site.kind == "attn_z" else width
            if iv._index.min() < 0 or iv._index.max() >= limit:
                raise ValueError(f"Set.index out of range for {site}: expected 0..{limit - 1}")
        items.append((site, iv))
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
    k = int(positions[5:])
    return slice(max(n_tok - k, 0), None) if step == 0 else slice(None)


def _apply(lm, site: Site, iv, step: int) -> None:
    """Read the site, change it at the chosen columns, write it back (inside a trace)."""
    x = read_site(lm, site)
    cols = _position_slice(iv.positions, step, x.shape[1])
    if cols is None:
        return
    new = x.clone()
    if isinstance(iv, Add):
        new[:, cols] += iv.alpha * iv.vector.to(device=x.device, dtype=x.dtype)
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
    write_site(lm, site, new)


def forward(lm, texts: Sequence[str], interventions: Sequence = (), padding_side: str = "left") -> torch.Tensor:
    """Logits ``[batch, tokens, vocab]`` of one forward pass with interventions applied."""
    items = _resolve(lm, interventions)
    enc = {k: v.to(lm.device) for k, v in lm.encode(list(texts), padding_side=padding_side).items()}
    out: dict = {}
    with torch.inference_mode(), lm.nn.trace(enc):
        for site, iv in items:
            _apply(lm, site, iv, 0)
        out["logits"] = lm.nn.output.logits
    return out["logits"].float().cpu()


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
):
    """Generate replies, optionally with interventions, and return the new text.

    ``prompts`` are user messages; with ``chat=True`` each is wrapped by
    :meth:`LoadedModel.chat_prompt` with ``system`` (one string for all, or
    one per prompt), otherwise used as is.
    Greedy by default; with ``do_sample=True`` the generator is seeded with
    ``seed`` before every batch, so reruns on a CPU give the same text.
    With ``return_ids=True`` returns a list of generated token-id lists instead.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of str, not one str")
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature={temperature}: expected > 0 when sampling")
    items = _resolve(lm, interventions)
    systems = [system] * len(prompts) if system is None or isinstance(system, str) else list(system)
    if len(systems) != len(prompts):
        raise ValueError(f"system has {len(systems)} entries for {len(prompts)} prompts")
    texts = [lm.chat_prompt(p, s) for p, s in zip(prompts, systems)] if chat else prompts
    gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                      pad_token_id=lm.tokenizer.pad_token_id)
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)

    results: list = []
    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    for batch in tqdm(batches, desc="generate", disable=not progress, leave=False):
        enc = lm.encode(batch, padding_side="left")
        enc.pop("position_ids")  # generate derives positions from the mask itself
        enc = {k: v.to(lm.device) for k, v in enc.items()}
        torch.manual_seed(seed)
        if not items:
            with torch.inference_mode():
                ids = lm.hf.generate(**enc, **gen_kwargs)
        else:
            ids = _generate_traced(lm, enc, items, gen_kwargs)
        new = ids[:, enc["input_ids"].shape[1]:].cpu()
        for row in new:
            row = row.tolist()
            cut = _strip_after_eos(row, lm)
            results.append(cut if return_ids else lm.tokenizer.decode(cut, skip_special_tokens=True).strip())
    return results


def _generate_traced(lm, enc: dict, items, gen_kwargs: dict) -> torch.Tensor:
    out: dict = {}
    with warnings.catch_warnings():
        # an open `tracer.all()` loop ends by design with a "never reached" warning
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        with torch.inference_mode(), lm.nn.generate(**gen_kwargs) as tracer:
            with tracer.invoke(enc):
                for step in tracer.all():
                    for site, iv in items:
                        _apply(lm, site, iv, step)
            with tracer.invoke():
                out["ids"] = tracer.result
    return out["ids"]


def _strip_after_eos(row: list[int], lm) -> list[int]:
    eos = lm.hf.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {lm.tokenizer.eos_token_id}
    eos.discard(None)
    for i, t in enumerate(row):
        if t in eos:
            return row[:i]
    return row
