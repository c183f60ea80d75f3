"""Benchmarks, measured side by side in one run (``make bench``).

1. Capture throughput: all-layer ``resid_post`` through emocircuits.capture
   (nnsight) against a plain transformers forward with
   ``output_hidden_states=True`` on the same batch. Ratio = plain time /
   capture time (>= 0.9 is the target; > 1 means capture is faster, which
   happens because capture stops after the last block and skips the
   unembedding).
2. Steered generation: generation with an ``Add`` intervention (alpha = 0)
   against plain ``generate``, same prompts and settings.
3. Load times: cold (GGUF -> float32 safetensors conversion in an empty
   cache folder) and warm (from that cache).

Runs alternate A, B, A, B... and report medians, so drift in machine load
hits both sides alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch


def _median_pair(fa, fb, repeats: int) -> tuple[float, float]:
    fa(), fb()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        t = time.perf_counter(); fa(); ta.append(time.perf_counter() - t)
        t = time.perf_counter(); fb(); tb.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--skip-cold", action="store_true")
    args = p.parse_args()

    from emocircuits import capture, load_model
    from emocircuits.activations import all_layers
    from emocircuits.steering import Add, generate

    torch.manual_seed(0)
    lm = load_model(args.model, device="cpu")
    base = ["I came home and found that my dog had died while I was at work today.",
            "Could you help me write a short note to thank my neighbour for the flowers?",
            "The exam results came out and I passed every subject, even chemistry!",
            "We missed the last train and had to sleep at the station in the cold."]
    texts = [f"{base[i % 4]} (note {i})" for i in range(args.batch)]
    sites = all_layers("resid_post", lm.n_layers)
    enc = lm.encode(texts)
    n_tok = int(enc["attention_mask"].sum())

    def plain():
        with torch.inference_mode():
            lm.hf(**enc, output_hidden_states=True)

    def plain_body():  # stricter: the decoder stack only, no unembedding
        with torch.inference_mode():
            lm.hf.model(**enc, output_hidden_states=True)

    def ours_none():
        capture(lm, texts, sites, pooling="none", batch_size=args.batch, progress=False)

    def ours_last():
        capture(lm, texts, sites, pooling="last_prompt_token", batch_size=args.batch, progress=False)

    print(f"model {lm.name}, batch {args.batch} texts / {n_tok} tokens, {lm.n_layers} layers, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    t_plain, t_none = _median_pair(plain, ours_none, args.repeats)
    print(f"capture all-layer resid_post, per-token (pooling=none): plain {t_plain * 1e3:.0f} ms, "
          f"capture {t_none * 1e3:.0f} ms, throughput ratio {t_plain / t_none:.2f} (target >= 0.9)")
    t_body, t_none2 = _median_pair(plain_body, ours_none, args.repeats)
    print(f"  stricter baseline, decoder stack without the unembedding: plain {t_body * 1e3:.0f} ms, "
          f"capture {t_none2 * 1e3:.0f} ms, ratio {t_body / t_none2:.2f}")
    t_plain, t_last = _median_pair(plain, ours_last, args.repeats)
    print(f"capture all-layer resid_post, pooled (last_prompt_token): plain {t_plain * 1e3:.0f} ms, "
          f"capture {t_last * 1e3:.0f} ms, throughput ratio {t_plain / t_last:.2f} (target >= 0.9)")

    v = torch.zeros(lm.d_model)
    prompts = base[:4]
    g_plain, g_steer = _median_pair(
        lambda: generate(lm, prompts, max_new_tokens=32),
        lambda: generate(lm, prompts, [Add(f"resid_post.{lm.n_layers // 2}", v, alpha=0.0)], max_new_tokens=32),
        max(2, args.repeats // 2))
    print(f"generation, 4 prompts x 32 tokens: plain {g_plain:.2f} s, with Add {g_steer:.2f} s, "
          f"ratio {g_plain / g_steer:.2f}")

    # the judges: 1,000 short texts through emotion, empathy and coherence (goal: under 30 s on 2 cores),
    # beside the time the sentence encoder alone takes on the same texts
    from emocircuits import judges as J

    emo, emp = J.EmotionJudge(use_all=True), J.EmpathyJudge(use_all=True)
    texts = ([r["text"] for r in J._read_jsonl(J.DATA_DIR / "judge_emotion.jsonl")] * 2)[:1000]
    t_enc, t_judge = _median_pair(lambda: J.embed(texts),
                                  lambda: (emo(texts), emp.score(texts), J.coherence(texts)), 1)
    print(f"judges, 1000 texts: all three judges {t_judge:.1f} s (goal < 30 s), encoder alone {t_enc:.1f} s, "
          f"ratio {t_enc / t_judge:.2f}")

    if not args.skip_cold:
        with tempfile.TemporaryDirectory() as tmp:
            old = os.environ.get("EMOCIRCUITS_CACHE")
            os.environ["EMOCIRCUITS_CACHE"] = tmp
            try:
                t = time.perf_counter(); load_model(args.model, device="cpu"); cold = time.perf_counter() - t
                t = time.perf_counter(); load_model(args.model, device="cpu"); warm = time.perf_counter() - t
            finally:
                if old is None:
                    os.environ.pop("EMOCIRCUITS_CACHE")
                else:
                    os.environ["EMOCIRCUITS_CACHE"] = old
        print(f"load {args.model}: cold (GGUF conversion) {cold:.1f} s, warm {warm:.1f} s, ratio {cold / warm:.0f}x")


if __name__ == "__main__":
    main()
