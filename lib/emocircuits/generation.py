"""Forward passes and generation under interventions (chapter 00): logits of one pass, replies decoded
greedily or sampled from one seeded stream per row, grids of settings sharing batches, and elicitation
records that keep everything needed to redo a reply. The interventions themselves are in
:mod:`.interventions`."""

from __future__ import annotations

import dataclasses
import numbers
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from .activations import check_batch_size
from .datasets import EMOTIONS, DataError, GenerationRecord, write_jsonl
from .interventions import apply_all, resolve
from .models import load_model
from .profiling import count, timed
from .registry import DEFAULT_MODEL


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


@dataclass(frozen=True)
class Decoding:
    """How replies are decoded, checked once when made, shared by :func:`generate`, :func:`generate_grid`,
    :func:`elicit`, :func:`emocircuits.steering.sweep` and the chapters.

    Greedy by default. ``do_sample=True`` draws each row's tokens from its own
    random stream keyed by ``seed`` (see :func:`generate`), at ``temperature``
    and within the ``top_p`` nucleus. ``repetition_penalty`` > 1 lowers the
    logit of every token already in the row, prompt included (CTRL's penalty, as
    transformers' ``generate``); ``no_repeat_ngram_size`` = n > 0 never picks a
    token that would repeat an n-gram already in the row. 1 and 0 leave
    decoding untouched. ``replace(**changes)`` gives a copy with some settings
    changed, checked again.
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self):
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"max_new_tokens={n!r}: expected an int >= 1")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature}: expected > 0 when sampling")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: expected a number in (0, 1]")
        penalty = self.repetition_penalty
        if isinstance(penalty, bool) or not (isinstance(penalty, (int, float)) and 0 < penalty < float("inf")):
            raise ValueError(f"repetition_penalty={penalty!r}: expected a number > 0 (1 = no penalty)")
        block = self.no_repeat_ngram_size
        if isinstance(block, bool) or not isinstance(block, numbers.Integral) or block < 0:
            raise ValueError(f"no_repeat_ngram_size={block!r}: expected an int >= 0 (0 = no block)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed={self.seed!r}: expected an int")
        for name in ("max_new_tokens", "seed", "no_repeat_ngram_size"):  # numpy ints become ints
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "do_sample", bool(self.do_sample))

    def replace(self, **changes) -> "Decoding":
        """A copy with ``changes`` (names of this class's fields), checked again."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown decoding setting(s) {', '.join(unknown)}; expected "
                            f"{', '.join(f.name for f in fields(self))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, decoding: "Decoding | None" = None, **settings) -> "Decoding":
        """``decoding`` (the defaults when None) with any ``settings`` given by name put in."""
        if decoding is not None and not isinstance(decoding, Decoding):
            raise TypeError(f"decoding={decoding!r:.80}: expected a Decoding (or None for the defaults)")
        base = decoding or cls()
        return base.replace(**settings) if settings else base

    def _generate_kwargs(self, pad_token_id) -> dict:
        # decoding is greedy; sampling is greedy on Gumbel-perturbed logits (_RowSampler)
        return dict(max_new_tokens=self.max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                    pad_token_id=pad_token_id, repetition_penalty=float(self.repetition_penalty),
                    no_repeat_ngram_size=int(self.no_repeat_ngram_size))


@timed("generation")
def generate(
    lm,
    prompts: Sequence[str],
    interventions: Sequence = (),
    decoding: Decoding | None = None,
    *,
    batch_size: int = 8,
    chat: bool = True,
    system: str | Sequence[str | None] | None = None,
    progress: bool = False,
    return_ids: bool = False,
    interventions_each: Sequence[Sequence] | None = None,
    **settings,
):
    """Generate replies, optionally with interventions, and return the new text.

    ``prompts`` are user messages; with ``chat=True`` each is wrapped by
    :meth:`LoadedModel.chat_prompt` with ``system`` (one string for all, or
    one per prompt), otherwise used as is. ``decoding`` says how
    (:class:`Decoding`); settings given by name (``max_new_tokens=32``)
    change it for this call.
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

    A mild ``repetition_penalty`` (1.2 is CTRL's authors' suggestion for
    greedy decoding) keeps a small model's greedy loops ("I'm so sorry to
    hear that. I'm so sorry to hear that."), which the coherence checks fail
    whatever was pushed, from hiding the effect of an intervention; paper B's
    generation script uses ``no_repeat_ngram_size=3`` with a penalty of 1.1.

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
    dec = Decoding.of(decoding, **settings)
    check_batch_size(batch_size)
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
    gen_kwargs = dec._generate_kwargs(lm.tokenizer.pad_token_id)
    keys = _row_keys(texts, per_row, dec.seed) if dec.do_sample else None

    results: list = []
    starts = range(0, len(texts), batch_size)
    for j in tqdm(starts, desc="generate", disable=not progress, leave=False):
        batch = texts[j:j + batch_size]
        items = _rows_items(per_row[j:j + batch_size])
        enc = lm.encode(batch, padding_side="left")
        enc.pop("position_ids")  # generate derives positions from the mask itself
        enc = {k: v.to(lm.device) for k, v in enc.items()}
        kwargs = gen_kwargs
        if dec.do_sample:
            sampler = _RowSampler(keys[j:j + batch_size], dec.temperature, dec.top_p)
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


ELICIT = Decoding(max_new_tokens=100)  # paper B's setting: greedy decoding of 100 tokens


def elicit(lm, prompts: list[dict], decoding: Decoding | None = None, *, judge=None, batch_size: int = 8,
           out: str | Path | None = None, progress: bool = True, **settings) -> list[GenerationRecord]:
    """Generate a reply to every prompt and keep it with everything needed to redo it.

    ``prompts`` are dicts with ``id``, ``user`` and optionally ``system`` and
    ``emotion`` (as :func:`datasets.sev_prompts` makes). ``decoding`` defaults to
    paper B's setting, greedy decoding of 100 tokens (:data:`ELICIT`); settings
    given by name change it. With a ``judge`` (a callable taking a list of
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
    dec = Decoding.of(decoding or ELICIT, **settings)
    kept = {"max_new_tokens": dec.max_new_tokens, "do_sample": dec.do_sample,
            "temperature": dec.temperature if dec.do_sample else None, "batch_size": batch_size}
    texts = generate(lm, [p["user"] for p in prompts], decoding=dec, system=[p.get("system") for p in prompts],
                     batch_size=batch_size, progress=progress)
    verdicts = judge(texts) if judge is not None else [None] * len(texts)
    records = []
    for p, text, v in zip(prompts, texts, verdicts):
        accepted = None
        if v is not None and p.get("emotion") is not None:
            accepted = v.get("label") == p["emotion"]
        records.append(GenerationRecord(id=f"{lm.name}:{p['id']}", model=lm.name, prompt_id=p["id"],
                                        emotion=p.get("emotion"), system=p.get("system"), user=p["user"],
                                        text=text, seed=dec.seed, settings=kept, judge=v, accepted=accepted))
    if out is not None:
        write_jsonl(out, records)
    return records


def reference_speed(model: str | None = None, n_prompts: int = 8, new_tokens: int = 32, threads: int = 1) -> dict:
    """A fixed yardstick for the machine: plain transformers ``generate`` on ``model`` (the default),
    ``n_prompts`` short prompts in one batch, greedy, exactly ``new_tokens`` new tokens each, on
    ``threads`` CPU threads. Returns ``{"model", "tokens_per_s", "seconds", "threads"}``; a slow machine
    shows here as well as in the chapters' times, a slower book only in the chapters'."""
    lm = load_model(model or DEFAULT_MODEL)
    prompts = [lm.chat_prompt(f"Tell me about day {i} of a trip to the coast.") for i in range(n_prompts)]
    enc = lm.encode(prompts, padding_side="left")
    enc.pop("position_ids")  # generate derives positions from the mask, as generation.generate lets it
    enc = {k: v.to(lm.device) for k, v in enc.items()}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      pad_token_id=lm.tokenizer.pad_token_id)
        with torch.inference_mode():
            lm.hf.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
            t0 = time.perf_counter()
            lm.hf.generate(**enc, **kwargs)
            seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old)
    return {"model": lm.name, "tokens_per_s": n_prompts * new_tokens / seconds, "seconds": seconds,
            "threads": threads, "prompts": n_prompts, "new_tokens": new_tokens}
