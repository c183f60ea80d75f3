"""Named sites: what they are, how they parse, and reading and writing them inside a trace (chapter 00).

A *site* is ``"{kind}.{layer}"``. For decoder block ``L``:

==============  ============================================================
``resid_pre``   the block's input (the residual stream before it)
``attn_z``      input of the attention output projection, ``[n_heads, head_dim]``
``attn_out``    what attention adds to the residual stream (after Gemma's
                post-attention norm)
``resid_mid``   the residual stream between attention and MLP
``mlp_in``      what the MLP reads: ``resid_mid`` after the pre-MLP norm
                (the input of a transcoder, chapter 05)
``mlp_act``     input of the MLP down projection, ``[d_mlp]`` (one value per neuron)
``mlp_out``     what the MLP adds to the residual stream (after Gemma's
                post-feed-forward norm)
``resid_post``  the block's output
==============  ============================================================

``resid_post.L`` equals ``hidden_states[L + 1]`` of transformers for every
layer but the last: transformers applies the final norm before it stores the
last entry, so ``hidden_states[-1]`` is ``norm(resid_post.{n_layers-1})``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

# Execution order inside one block: reads in a trace must follow it.
SITE_KINDS = ("resid_pre", "attn_z", "attn_out", "resid_mid", "mlp_in", "mlp_act", "mlp_out", "resid_post")
_ORDER = {k: i for i, k in enumerate(SITE_KINDS)}


@dataclass(frozen=True)
class Site:
    kind: str
    layer: int

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}"

    @property
    def order(self) -> tuple[int, int]:
        return (self.layer, _ORDER[self.kind])


_SITE_RE = re.compile(r"^([a-z_]+)\.(-?\d+)$")


def parse_site(site: str | Site, n_layers: int | None = None) -> Site:
    """``"resid_post.5"`` -> ``Site("resid_post", 5)``; negative layers count from the end."""
    if isinstance(site, Site):
        kind, layer = site.kind, site.layer
    else:
        m = _SITE_RE.match(str(site).strip())
        if not m or m.group(1) not in _ORDER:
            raise ValueError(
                f"site {site!r} is not '<kind>.<layer>' with kind one of {', '.join(SITE_KINDS)}"
            )
        kind, layer = m.group(1), int(m.group(2))
    if n_layers is not None:
        if layer < 0:
            layer += n_layers
        if not 0 <= layer < n_layers:
            raise ValueError(f"site {str(site)!r}: layer out of range, expected 0..{n_layers - 1}")
    return Site(kind, layer)


def parse_sites(sites: str | Site | Iterable[str | Site], n_layers: int | None = None) -> list[Site]:
    if isinstance(sites, (str, Site)):
        sites = [sites]
    out = [parse_site(s, n_layers) for s in sites]
    if not out:
        raise ValueError("sites is empty; give at least one site such as 'resid_post.5'")
    if len(set(out)) != len(out):
        raise ValueError(f"sites contains duplicates: {[str(s) for s in out]}")
    return out


def all_layers(kind: str, n_layers: int) -> list[str]:
    """``all_layers("resid_post", 30)`` -> every layer's site of that kind."""
    parse_site(f"{kind}.0")
    return [f"{kind}.{i}" for i in range(n_layers)]


# ---------------------------------------------------------------------------
# reading and writing a site inside an nnsight trace


def _envoy(lm, site: Site):
    """(envoy, attribute) whose value is the site, where the model's :class:`~emocircuits.models.Layout` puts it."""
    layer, lay, i = lm.layer(site.layer), lm.layout, site.layer
    if site.kind == "resid_pre":
        return layer, "input"
    if site.kind == "resid_post":
        return layer, "output"
    if site.kind == "attn_z":
        return lm.o_proj(i), "input"
    if site.kind == "mlp_act":
        return lm.down_proj(i), "input"
    if site.kind == "mlp_in":
        return layer.mlp, "input"
    if site.kind == "attn_out":  # after the post-attention norm where the layout has one
        return (lm.part(i, lay.attn_out_norm), "output") if lay.attn_out_norm else (layer.self_attn, "output0")
    if site.kind == "resid_mid":
        return lm.part(i, lay.mlp_in_norm), "input"
    if site.kind == "mlp_out":
        return (lm.part(i, lay.mlp_out_norm), "output") if lay.mlp_out_norm else (layer.mlp, "output")
    raise ValueError(f"unknown site kind {site.kind!r}")  # pragma: no cover - parse_site guards


def read_site(lm, site: Site) -> torch.Tensor:
    """The site's value, ``[batch, tokens, width]``; call inside ``lm.nn.trace``.

    ``attn_z`` comes flat (``n_heads * head_dim``); :func:`split_heads` reshapes it.
    """
    env, attr = _envoy(lm, site)
    if attr == "output0":
        return env.output[0]
    return getattr(env, attr)


def write_site(lm, site: Site, value: torch.Tensor) -> None:
    """Replace the site's value inside a trace (same shape as :func:`read_site`)."""
    env, attr = _envoy(lm, site)
    if attr == "output0":
        out = env.output
        env.output = (value,) + tuple(out[1:])
    elif attr == "input":
        env.input = value
    else:
        env.output = value


def split_heads(z: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[..., n_heads * head_dim]`` -> ``[..., n_heads, head_dim]``."""
    return z.reshape(*z.shape[:-1], n_heads, z.shape[-1] // n_heads)


def site_width(lm, site: Site) -> int:
    if site.kind == "mlp_act":
        return lm.d_mlp
    if site.kind == "attn_z":
        return lm.n_heads * lm.head_dim
    return lm.d_model


def model_layers(lm, layers: Sequence[int] | None) -> list[int]:
    """``layers`` as ints (all of ``lm``'s when None), refused by name when empty or out of range."""
    layers = list(range(lm.n_layers)) if layers is None else [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < lm.n_layers]
    if bad or not layers:
        what = f"layers {bad} out of range" if bad else "layers is empty"
        raise ValueError(f"{what}: {lm.name} has layers 0..{lm.n_layers - 1}")
    return layers
