"""Is a reply readable text (chapters 01-06)? Cheap checks that catch what steering breaks first:
one word repeated, a long n-gram repeated, a reply that is mostly fragments, and, given the model, the
reply's perplexity under the unsteered model. Thresholds are declared once here and calibrated in chapter
02 on written and generated replies."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

from .profiling import timed

COHERENCE_THRESHOLDS = {
    "min_words": 3,  # fewer words is treated as empty
    "min_alpha_fraction": 0.6,  # letters / non-space characters
    "min_ascii_letters": 0.9,  # ASCII letters / letters: the judges read English only
    "max_word_letters": 20,  # longest run of letters: English words are shorter (the written corpora: 15)
    "min_distinct_2": 0.5,  # distinct bigrams / bigrams
    "max_repeat_ngram": 6,  # longest word n-gram that occurs twice
    "max_top_word_share": 0.2,  # one content word's share of all words, once it occurs 3 or more times
    "max_any_word_share": 0.35,  # any one word's share, function words too, once it occurs 4 or more times
    "max_fragment_share": 0.4,  # sentences of one or two words / sentences, once there are 3 or more such
    "max_perplexity": 200.0,  # under the unsteered model, when one is given
}


# Function words that may dominate a short reply without it being degenerate;
# the top-word check counts only other words of three or more letters.
# Words are split at apostrophes, so "don't" counts as "don" and "t".
_FUNCTION_WORDS = frozenset("""the and you your that this with for are was were have has had but not what they them
she her his him from will can all just our its there their then than been being into out about would could should
when who how why which also very more some any one don didn doesn isn won""".split())


def _top_word(words: list[str], content_only: bool = True) -> tuple[int, float]:
    """Occurrences of the most frequent content word (any word if not ``content_only``), and its share of
    all ``words``."""
    content = [w for w in words if len(w) >= 3 and w not in _FUNCTION_WORDS] if content_only else words
    if not content:
        return 0, 0.0
    n = Counter(content).most_common(1)[0][1]
    return n, n / len(words)


_SENTENCE_END = re.compile(r"(?<=[.?!\u2026])")


def _fragments(text: str) -> tuple[int, float]:
    """Finished sentences of at most two words, as a count and a share of finished sentences.

    A sentence is finished when it ends with . ? ! or an ellipsis; the last,
    unfinished one of a reply cut at its token limit is not counted. A
    word is a whitespace-separated token with a letter in it.
    """
    done = [p for p in _SENTENCE_END.split(text) if p.rstrip()[-1:] in (".", "?", "!", "\u2026")]
    done = [p for p in done if re.search(r"[^\W\d_]", p)]
    short = sum(len([w for w in p.split() if re.search(r"[^\W\d_]", w)]) <= 2 for p in done)
    return short, short / len(done) if done else 0.0


def _longest_repeated_ngram(words: list[str]) -> int:
    best = 0
    for n in range(1, len(words) // 2 + 1):
        seen = set()
        found = False
        for i in range(len(words) - n + 1):
            g = tuple(words[i:i + n])
            if g in seen:
                found = True
                break
            seen.add(g)
        if not found:
            break
        best = n
    return best


@timed("judging")
def coherence(texts: Sequence[str], lm=None, contexts: Sequence[str] | None = None,
              thresholds: dict | None = None) -> list[dict]:
    """Repetition and language checks per text, plus perplexity when ``lm`` is given.

    Repetition is checked three ways: distinct bigrams, the longest repeated
    n-gram, and whether one word takes over the text: a content word past
    20% ("I'm angry, angry, angry. You're angry...", what a strong push
    toward an emotion makes a small model write: its bigrams vary, yet it
    is no reply) or any word, function words too, past 35% ("He's really
    He' She's, He'' He'' He' She'..."; the written corpora's highest share
    is 22%).
    A fourth check counts sentences of one or two words ("You're not?
    What's she? He's? He's?", what a strong push toward empathy makes the
    default model write): three or more of them, making up more than 40%
    of the finished sentences, fail. The language check fails symbols,
    other scripts, and letters run together past 20 ("LARGEURESURASS...").

    ``coherent`` is true when every measured quantity is within
    :data:`COHERENCE_THRESHOLDS`; ``score`` in [0, 1] is the share of checks
    passed. Perplexity is of the text given its context (the prompt), under
    the model passed in, which should be the *unsteered* model.
    """
    th = {**COHERENCE_THRESHOLDS, **(thresholds or {})}
    ppl = perplexity(lm, texts, contexts) if lm is not None else [None] * len(texts)
    out = []
    for text, pp in zip(texts, ppl):
        words = re.findall(r"\w+|[^\w\s]", text.lower())
        plain = [w for w in words if w.isalnum()]
        chars = [c for c in text if not c.isspace()]
        letters = [c for c in chars if c.isalpha()]
        alpha = len(letters) / max(len(chars), 1)
        ascii_share = sum(c.isascii() for c in letters) / len(letters) if letters else 1.0
        longest = max((len(w) for w in re.findall(r"[^\W\d_]+", text)), default=0)
        bigrams = list(zip(plain, plain[1:]))
        distinct2 = len(set(bigrams)) / len(bigrams) if bigrams else 1.0
        rep = _longest_repeated_ngram(plain)
        top_n, top_share = _top_word(plain)
        any_n, any_share = _top_word(plain, content_only=False)
        frag_n, frag_share = _fragments(text)
        checks = {
            "nonempty": len(plain) >= th["min_words"],
            "language": (alpha >= th["min_alpha_fraction"] and ascii_share >= th["min_ascii_letters"]
                         and longest <= th["max_word_letters"]),
            "distinct": distinct2 >= th["min_distinct_2"],
            "repetition": rep <= th["max_repeat_ngram"],
            "top_word": ((top_n < 3 or top_share <= th["max_top_word_share"])
                         and (any_n < 4 or any_share <= th["max_any_word_share"])),
            "fragments": frag_n < 3 or frag_share <= th["max_fragment_share"],
        }
        if pp is not None:
            checks["perplexity"] = pp <= th["max_perplexity"]
        out.append({"words": len(plain), "alpha_fraction": alpha, "ascii_letters": ascii_share,
                    "distinct_2": distinct2,
                    "longest_repeat": rep, "top_word_share": top_share, "any_word_share": any_share,
                    "fragment_share": frag_share,
                    "perplexity": pp, "checks": checks,
                    "score": sum(checks.values()) / len(checks), "coherent": all(checks.values())})
    return out


@timed("perplexity")
def perplexity(lm, texts: Sequence[str], contexts: Sequence[str] | None = None, batch_size: int = 16) -> list[float]:
    """Per-text perplexity of ``text`` (after ``context``, if given) under a loaded model.

    Texts that share a context (a sweep's replies to one prompt) are scored
    together: the context's tokens run through the model once and their
    key-value cache serves every text after it, which gives the same numbers
    as scoring each text alone and costs a fraction of it when contexts are
    long.
    """
    contexts = list(contexts) if contexts is not None else [""] * len(texts)
    if len(contexts) != len(texts):
        raise ValueError(f"contexts has {len(contexts)} entries for {len(texts)} texts")
    by_context: dict[str, list[int]] = {}
    for i, c in enumerate(contexts):
        by_context.setdefault(c, []).append(i)
    out: list[float] = [float("nan")] * len(texts)
    alone = [i for c, idx in by_context.items() if not c or len(idx) == 1 for i in idx]
    for i, v in zip(alone, _perplexity_batches(lm, [contexts[i] for i in alone], [texts[i] for i in alone],
                                               batch_size)):
        out[i] = v
    for c, idx in by_context.items():
        if c and len(idx) > 1:
            for i, v in zip(idx, _perplexity_shared(lm, c, [texts[i] for i in idx], batch_size)):
                out[i] = v
    return out


def _encode_after(lm, ctx: list[str], txt: list[str]):
    """Each context followed by its text, right-padded: the encoding, the token offsets, and ``in_text[row, j]``,
    true where token ``j + 1`` is the text's (it is read from the logits at ``j``)."""
    import torch

    full = [c + t if t else c + " " for c, t in zip(ctx, txt)]
    enc = lm.encode(full, padding_side="right", return_offsets=True)
    offsets = enc.pop("offset_mapping")
    starts = torch.tensor([len(c) for c in ctx])[:, None]
    return enc, offsets, (offsets[:, 1:, 0] >= starts) & enc["attention_mask"][:, 1:].bool()


def _exp_mean_nll(logits, targets, sel) -> list[float]:
    """Per row, exp of the mean negative log-probability of ``targets`` where ``sel``; inf for a row without any."""
    import torch

    logp = torch.log_softmax(logits.float(), -1).gather(-1, targets.to(logits.device)[..., None])[..., 0].cpu()
    return [float(math.exp(-logp[r][sel[r]].mean())) if sel[r].any() else float("inf") for r in range(len(sel))]


def _perplexity_batches(lm, ctx: list[str], txt: list[str], batch_size: int) -> list[float]:
    """:func:`_perplexity_batch` over consecutive batches of ``batch_size`` rows."""
    return [v for j in range(0, len(txt), batch_size)
            for v in _perplexity_batch(lm, ctx[j:j + batch_size], txt[j:j + batch_size])]


def _perplexity_batch(lm, ctx: list[str], txt: list[str]) -> list[float]:
    """Perplexity of each ``txt`` after its ``ctx``, in one padded forward pass that projects onto the
    vocabulary only where some row reads a text token."""
    import torch

    lm.need_weights("perplexity")
    enc, _, in_text = _encode_after(lm, ctx, txt)
    keep = in_text.any(0).nonzero()[:, 0]
    if not keep.numel():
        return [float("inf")] * len(txt)
    with torch.inference_mode():
        logits = lm.hf(**{k: v.to(lm.device) for k, v in enc.items()}, logits_to_keep=keep.to(lm.device)).logits
    return _exp_mean_nll(logits, enc["input_ids"][:, keep + 1], in_text[:, keep])


def _perplexity_shared(lm, context: str, txt: list[str], batch_size: int) -> list[float]:
    """Perplexity of each ``txt`` after the one ``context``: the leading tokens every row shares inside the
    context run through the model once, and a copy of their cache serves each batch of texts."""
    import copy

    import torch

    lm.need_weights("perplexity")
    enc, offsets, in_text = _encode_after(lm, [context] * len(txt), txt)
    ids, att = enc["input_ids"], enc["attention_mask"]
    inside = (offsets[:, :, 1] <= len(context)) & (ids == ids[:1]) & att.bool()
    n_pre = int(inside.int().cumprod(1).sum(1).min())
    if n_pre < 2:  # nothing worth sharing
        return _perplexity_batches(lm, [context] * len(txt), txt, batch_size)
    dev, out = lm.device, []
    with torch.inference_mode():
        pre = lm.hf(input_ids=ids[:1, :n_pre].to(dev), use_cache=True, logits_to_keep=1)
        for j in range(0, len(txt), batch_size):
            rows = slice(j, j + batch_size)
            b, width = len(txt[rows]), int(att[rows].sum(1).max())  # this batch's longest row
            cache = copy.deepcopy(lm.cache_of(pre))
            cache.batch_repeat_interleave(b)
            pos = torch.arange(n_pre, width)[None].expand(b, -1)
            logits = lm.hf(input_ids=ids[rows, n_pre:width].to(dev), attention_mask=att[rows, :width].to(dev),
                           position_ids=pos.to(dev), **lm.past(cache)).logits
            # read at positions n_pre - 1 (the shared pass's last) to the second-to-last
            logits = torch.cat([pre.logits.expand(b, -1, -1), logits[:, :-1]], 1)
            out += _exp_mean_nll(logits, ids[rows, n_pre:width], in_text[rows, n_pre - 1:width - 1])
    return out


def judged(lm, score, texts: Sequence[str], users: Sequence[str]) -> tuple[list[float], list[bool]]:
    """``(scores, coherent)``: ``score(texts, users)``, a judge's reading of replies given their user messages,
    and whether each reply is coherent given its chat prompt (:func:`coherence` with ``lm``)."""
    texts, users = list(texts), list(users)
    if len(texts) != len(users):
        raise ValueError(f"{len(texts)} replies for {len(users)} user messages")
    checks = coherence(texts, lm=lm, contexts=[lm.chat_prompt(u) for u in users])
    return list(score(texts, users)), [c["coherent"] for c in checks]
