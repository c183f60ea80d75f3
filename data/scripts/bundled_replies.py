"""Replies of the bundled models for the hand-labelled validation set of the emotion judges.

Writes ``_build/judge_emotion_bundled.unlabelled.jsonl`` (outside data/, so that nothing reads it): for each bundled model, greedy replies to neutral-event SEV *discovery* prompts under paper B's
instruction ("Always reply in {emotion}...") and, without instruction, pushed along each emotion's
direction (paper B's steering-vector baseline, ``circuits.direction_steering``) at two strengths. The
replies were then labelled by hand, one at a time, without any judge's verdict in view, into
``judge_emotion_bundled.jsonl`` (see data/README.md).

Run: ``.venv/bin/python data/scripts/bundled_replies.py`` (about 10 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from emocircuits import circuits as C
from emocircuits import datasets as ds
from emocircuits import load_model
from emocircuits.cache import atomic_write_text
from emocircuits.steering import generate

EMO = list(ds.EMOTIONS)
OUT = Path(__file__).resolve().parents[2] / "_build" / "judge_emotion_bundled.unlabelled.jsonl"


def main(models=("smollm2-135m", "gemma3-270m"), n_scenarios: int = 4, alphas=(8.0, 16.0), n_tokens: int = 40):
    all_disc = ds.load_named("sev_discovery")
    recs = ds.first_per_theme(all_disc, 1)[:n_scenarios]  # one scenario of each of the first themes
    rows = []
    for name in models:
        lm = load_model(name)
        prompts, acts = C.sev_activations(lm, ds.first_per_theme(all_disc, 1))
        dirs = C.directions(acts, [p["emotion"] for p in prompts],
                            [f"{p['record_id']}:{p['valence']}" for p in prompts], EMO)
        L = lm.n_layers
        layers = list(range(L // 3, 2 * L // 3))
        rms = {la: float(acts[f"resid_post.{la}"].pow(2).mean().sqrt()) for la in layers}
        asked = ds.sev_prompts(recs, emotions=EMO, valences=("neutral",))
        texts = generate(lm, [p["user"] for p in asked], system=[p["system"] for p in asked],
                         max_new_tokens=n_tokens, batch_size=8, repetition_penalty=1.2)
        rows += [{"model": name, "how": "prompted", "asked": p["emotion"], "record_id": p["record_id"], "text": t}
                 for p, t in zip(asked, texts)]
        plain = ds.sev_prompts(recs, emotions=None, valences=("neutral",))
        for alpha in alphas:
            for emo in EMO:
                push = C.direction_steering(dirs, EMO, emo, alpha, rms, layers)
                texts = generate(lm, [p["user"] for p in plain], push, max_new_tokens=n_tokens, batch_size=8,
                                 repetition_penalty=1.2)
                rows += [{"model": name, "how": f"steered alpha {alpha:g}", "asked": emo,
                          "record_id": p["record_id"], "text": t} for p, t in zip(plain, texts)]
    atomic_write_text(OUT, "".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} replies -> {OUT}")


if __name__ == "__main__":
    sys.exit(main())
