"""Training per-layer transcoders (chapter 05): the skip fitted first in closed form (ridge regression
from ``mlp_in`` to ``mlp_out`` on the first batches), then top-k features on what it leaves, with Adam on
shuffled minibatches. One forward pass per batch feeds every layer; nothing is held beyond the batch.
Checkpoints make a stopped run resume to the same weights, and a finished set is cached by model, texts,
settings and code."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import atomic_write, atomic_write_text, cache_dir, code_version, stable_hash
from .profiling import timed
from .transcoders import (Transcoder, TranscoderConfig, TranscoderError, TranscoderSet, first_left_out, mlp_io,
                          text_batches)


@dataclass
class TrainSettings:
    n_features: int = 2048
    k: int = 32
    epochs: int = 2
    batch_size: int = 16
    max_length: int = 128
    lr: float = 2e-3
    lr_decay: float = 0.0  # the last fraction of the steps, over which the learning rate falls linearly to 0
    aux_k: int = 256
    aux_coef: float = 1 / 32
    dead_after_tokens: int = 20_000
    seed: int = 0
    checkpoint_every: int = 25
    skip: bool = True
    # the first ``skip_fit`` of the first epoch's batches fit the skip in closed form (ridge regression from
    # mlp_in to mlp_out) before any feature trains; the features then learn what that linear map leaves.
    # 0: the skip is learned by gradient descent with the features. ``ridge`` is the penalty in tokens per input
    # dimension (lambda = ridge * d_model * the inputs' mean square): it matters only when the fit sees few tokens
    skip_fit: float = 0.2
    ridge: float = 0.3
    step_tokens: int = 128  # tokens per optimiser step (a batch's tokens, shuffled, in steps of this size)
    layers: list[int] | None = field(default=None)


def _sparse_decode(idx: torch.Tensor, vals: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """``sum_j vals[t, j] * W_dec[idx[t, j]]`` per token: a top-k decoder's output without the dense product."""
    return torch.nn.functional.embedding_bag(idx, W_dec, mode="sum", per_sample_weights=vals)


class _Trainer:
    """Trains one transcoder per layer in the normalised space, then folds the scales out."""

    def __init__(self, lm, st: TrainSettings, corpus_hash: str, n_batches: int):
        self.st = st
        self.n_batches = n_batches
        self.fits_skip = st.skip and st.skip_fit > 0
        # batches of the first epoch that only gather the skip's statistics (a one-epoch run keeps at least one
        # for the features; a run of a single batch fits the skip on it and then trains the features on it)
        cap = n_batches - 1 if st.epochs == 1 and n_batches > 1 else n_batches
        self.skip_batches = min(cap, max(1, math.ceil(st.skip_fit * n_batches))) if self.fits_skip else 0
        self.layers = list(st.layers) if st.layers is not None else list(range(lm.n_layers))
        g = torch.Generator().manual_seed(st.seed)
        d, F = lm.d_model, st.n_features
        self.params: dict[int, dict[str, torch.Tensor]] = {}
        for layer in self.layers:
            W_dec = torch.randn(F, d, generator=g)
            W_dec /= W_dec.norm(dim=1, keepdim=True)
            W_enc = torch.randn(F, d, generator=g) / math.sqrt(d)
            init = {"W_enc": W_enc, "b_enc": torch.zeros(F), "W_dec": W_dec, "b_dec": torch.zeros(d)}
            if st.skip:
                init["W_skip"] = torch.zeros(d, d)
            self.params[layer] = {n: t.requires_grad_(n != "W_skip" or not self.fits_skip) for n, t in init.items()}
        self.opt = {layer: torch.optim.Adam([t for t in p.values() if t.requires_grad], lr=st.lr)
                    for layer, p in self.params.items()}
        # least-squares statistics of the skip fit, [x, 1]^T [x, 1] and [x, 1]^T y in the normalised space
        self.gram = {layer: torch.zeros(d + 1, d + 1, dtype=torch.float64) for layer in self.layers}
        self.cross = {layer: torch.zeros(d + 1, d, dtype=torch.float64) for layer in self.layers}
        self.scale_in = {layer: 0.0 for layer in self.layers}
        self.scale_out = {layer: 0.0 for layer in self.layers}
        # with a fitted skip, the features learn (y - skip - intercept) / scale_res, in the normalised space;
        # scale_res (the leftover's size, fixed from the first feature batch) keeps their targets at unit scale
        self.intercept = {layer: torch.zeros(d) for layer in self.layers}
        self.scale_res = {layer: 0.0 if self.fits_skip else 1.0 for layer in self.layers}
        self.last_fired = {layer: torch.zeros(F, dtype=torch.long) for layer in self.layers}
        self.tokens = 0
        self.step = 0
        self.epoch = 0
        self.history: list[dict] = []
        self.lm_name, self.d_model, self.corpus_hash = lm.name, d, corpus_hash

    def lr_at(self, step: int) -> float:
        """The learning rate of ``step``: ``lr``, then a linear decay to 0 over the last ``lr_decay`` of the steps."""
        st = self.st
        total = st.epochs * self.n_batches
        start = total * (1.0 - st.lr_decay)
        if st.lr_decay <= 0 or step < start:
            return st.lr
        return st.lr * max(0.0, (total - step) / (total - start))

    # ---- one batch
    def train_batch(self, xin: dict, xout: dict, mask: torch.Tensor) -> dict:
        m = first_left_out(mask).reshape(-1)
        n_tok = int(m.sum())
        xs, ys = {}, {}
        for layer in self.layers:
            x = xin[layer].reshape(-1, self.d_model)[m].float().cpu()
            y = xout[layer].reshape(-1, self.d_model)[m].float().cpu()
            if self.scale_in[layer] == 0.0:  # fixed from the first batch: mean squared norm -> d_model
                self.scale_in[layer] = float(x.pow(2).sum(-1).mean().sqrt()) / math.sqrt(self.d_model)
                self.scale_out[layer] = float(y.pow(2).sum(-1).mean().sqrt()) / math.sqrt(self.d_model)
                if not self.fits_skip:
                    with torch.no_grad():
                        self.params[layer]["b_dec"].copy_(y.mean(0) / self.scale_out[layer])
            xs[layer], ys[layer] = x / self.scale_in[layer], y / self.scale_out[layer]
        if self.step < self.skip_batches:  # the skip fit's batches: statistics only
            for layer in self.layers:
                x1 = torch.cat([xs[layer], torch.ones(n_tok, 1)], 1)
                self.gram[layer] += (x1.T @ x1).double()
                self.cross[layer] += (x1.T @ ys[layer]).double()
            if self.step + 1 == self.skip_batches:
                self._solve_skip()
            if not (self.step + 1 == self.n_batches and self.st.epochs == 1):
                self.tokens += n_tok
                self.step += 1
                row = {"step": self.step, "tokens": self.tokens, "fve_mean": float("nan")}
                self.history.append(row)
                return row
        st = self.st
        lr = self.lr_at(self.step)
        order = torch.randperm(n_tok, generator=torch.Generator().manual_seed(st.seed * 1_000_003 + self.step))
        chunks = order.split(st.step_tokens) if st.step_tokens > 0 else (order,)
        fve = {}
        for layer in self.layers:
            p, sse, sst = self.params[layer], 0.0, 0.0
            for group in self.opt[layer].param_groups:
                group["lr"] = lr
            seen = self.tokens
            x_all, y_all = xs[layer], ys[layer]
            if self.fits_skip:  # the features learn what the fitted linear map leaves
                with torch.no_grad():
                    y_all = y_all - x_all @ p["W_skip"].T - self.intercept[layer]
                if self.scale_res[layer] == 0.0:
                    self.scale_res[layer] = float(y_all.pow(2).sum(-1).mean().sqrt()) / math.sqrt(self.d_model)
                y_all = y_all / self.scale_res[layer]
            for rows in chunks:
                err, var = self._step(layer, x_all[rows], y_all[rows], seen)
                seen += len(rows)
                sse, sst = sse + err, sst + var
            fve[layer] = 1.0 - sse / max(sst, 1e-12)
        self.tokens += n_tok
        self.step += 1
        row = {"step": self.step, "tokens": self.tokens, "fve_mean": float(np.mean(list(fve.values())))}
        self.history.append(row)
        return row

    def _step(self, layer: int, x: torch.Tensor, y: torch.Tensor, seen: int) -> tuple[float, float]:
        """One optimiser step of one layer on ``x -> y`` (normalised); its squared error and variance summed."""
        st, p = self.st, self.params[layer]
        pre = x @ p["W_enc"].T + p["b_enc"]
        vals, idx = pre.topk(st.k, dim=-1)
        f_vals = torch.relu(vals)
        # the decoder reads only the k chosen rows per token (an embedding bag), not a dense [tokens, F] product
        y_hat = _sparse_decode(idx, f_vals, p["W_dec"]) + p["b_dec"]
        if "W_skip" in p and not self.fits_skip:
            y_hat = y_hat + x @ p["W_skip"].T
        var = (y - y.mean(0)).pow(2).sum(-1).mean()
        loss = (y_hat - y).pow(2).sum(-1).mean() / var
        fired = torch.zeros(st.n_features, dtype=torch.bool)
        fired[idx[f_vals > 0]] = True
        self.last_fired[layer][fired] = seen + len(x)
        dead = (seen + len(x) - self.last_fired[layer]) > st.dead_after_tokens
        total = loss
        if dead.any() and st.aux_k > 0:  # AuxK: dead features learn to explain what the live ones miss
            kk = min(st.aux_k, int(dead.sum()))
            av, ai = pre.masked_fill(~dead, float("-inf")).topk(kk, dim=-1)
            err = (y - y_hat).detach()
            aux_hat = _sparse_decode(ai, torch.relu(av), p["W_dec"])
            aux = (aux_hat - err).pow(2).sum(-1).mean() / err.pow(2).sum(-1).mean().clamp_min(1e-8)
            total = loss + st.aux_coef * torch.nan_to_num(aux)
        self.opt[layer].zero_grad()
        total.backward()
        self.opt[layer].step()
        with torch.no_grad():
            p["W_dec"] /= p["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-8)
        n = len(x)
        return loss.item() * var.item() * n, var.item() * n

    def _solve_skip(self) -> None:
        """The ridge-regression skip of every layer, and its intercept, from the gathered statistics."""
        d = self.d_model
        for layer in self.layers:
            g = self.gram[layer]
            per_token = float(g.diagonal()[:d].mean() / g[d, d])  # the inputs' mean square per dimension
            ridge = self.st.ridge * d * per_token * torch.eye(d + 1, dtype=g.dtype)
            ridge[d, d] = 0.0  # the intercept is not shrunk
            sol = torch.linalg.solve(g + ridge, self.cross[layer])  # [d + 1, d]
            with torch.no_grad():
                self.params[layer]["W_skip"].copy_(sol[:d].T.float())
            self.intercept[layer] = sol[d].float()
            self.gram[layer], self.cross[layer] = None, None

    # ---- results
    def transcoders(self) -> TranscoderSet:
        out = TranscoderSet()
        for layer in self.layers:
            p = {n: t.detach() for n, t in self.params[layer].items()}
            si, so, rho = self.scale_in[layer], self.scale_out[layer], self.scale_res[layer] or 1.0
            cfg = TranscoderConfig(d_model=self.d_model, n_features=self.st.n_features, layer=layer, k=self.st.k,
                                   model=self.lm_name, tokens_seen=self.tokens, seed=self.st.seed,
                                   corpus=self.corpus_hash, skip=self.st.skip)
            # y = so * (x / si @ W_skip.T + intercept + rho * (f @ W_dec + b_dec)) in the model's units; with
            # f' = so * rho * f the decoder rows stay unit norm there
            g = so * rho
            state = {"W_enc": p["W_enc"] * (g / si), "b_enc": p["b_enc"] * g,
                     "W_dec": p["W_dec"].clone(), "b_dec": so * (self.intercept[layer] + rho * p["b_dec"])}
            if "W_skip" in p:
                state["W_skip"] = p["W_skip"] * (so / si)
            out[layer] = Transcoder.from_state(state, cfg)
        return out

    # ---- checkpoints (safetensors + JSON metadata)
    def save_checkpoint(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            for n, t in self.params[layer].items():
                tensors[f"{layer}.{n}"] = t.detach().contiguous()
            for i, (n, _) in enumerate(self.params[layer].items()):
                s = self.opt[layer].state.get(self.params[layer][n], {})
                if s:
                    tensors[f"{layer}.{n}.exp_avg"] = s["exp_avg"].contiguous()
                    tensors[f"{layer}.{n}.exp_avg_sq"] = s["exp_avg_sq"].contiguous()
                    tensors[f"{layer}.{n}.step"] = torch.as_tensor(s["step"]).reshape(1).float()
            tensors[f"{layer}.last_fired"] = self.last_fired[layer]
            tensors[f"{layer}.intercept"] = self.intercept[layer].contiguous()
            if self.gram[layer] is not None and self.step < self.skip_batches:  # the skip fit is under way
                tensors[f"{layer}.gram"], tensors[f"{layer}.cross"] = self.gram[layer], self.cross[layer]
        meta = {"step": self.step, "epoch": self.epoch, "tokens": self.tokens, "history": self.history,
                "scale_in": self.scale_in, "scale_out": self.scale_out, "scale_res": self.scale_res, "settings": asdict(self.st),
                "corpus": self.corpus_hash}
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"trainer": json.dumps(meta)}))

    def load_checkpoint(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads(fh.metadata()["trainer"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        self.step, self.epoch, self.tokens = meta["step"], meta["epoch"], meta["tokens"]
        self.history = meta["history"]
        self.scale_in = {int(k): v for k, v in meta["scale_in"].items()}
        self.scale_out = {int(k): v for k, v in meta["scale_out"].items()}
        self.scale_res = {int(k): v for k, v in meta["scale_res"].items()}
        for layer in self.layers:
            with torch.no_grad():
                for n, t in self.params[layer].items():
                    t.copy_(tensors[f"{layer}.{n}"])
            for n, t in self.params[layer].items():
                if f"{layer}.{n}.exp_avg" in tensors:
                    self.opt[layer].state[t] = {
                        "step": tensors[f"{layer}.{n}.step"].reshape(()),
                        "exp_avg": tensors[f"{layer}.{n}.exp_avg"].clone(),
                        "exp_avg_sq": tensors[f"{layer}.{n}.exp_avg_sq"].clone()}
            self.last_fired[layer] = tensors[f"{layer}.last_fired"].clone()
            self.intercept[layer] = tensors[f"{layer}.intercept"].clone()
            if f"{layer}.gram" in tensors:
                self.gram[layer], self.cross[layer] = tensors[f"{layer}.gram"], tensors[f"{layer}.cross"]
            elif self.step >= self.skip_batches:
                self.gram[layer], self.cross[layer] = None, None


@timed("training")
def train(lm, texts: Sequence[str], settings: TrainSettings | None = None, folder=None, progress: bool = True,
          stop_after_steps: int | None = None) -> TranscoderSet:
    """Train transcoders for ``settings.layers`` (default: all) on ``texts``; cached and resumable.

    The finished set is stored under ``folder`` (default: a cache folder keyed
    by the model, the texts and the settings) and loaded from there next time.
    A checkpoint is written every ``checkpoint_every`` batches; a run that is
    stopped (or told to stop with ``stop_after_steps``) picks up where it
    left off, on the same batches, and ends with the same weights as an
    uninterrupted run.
    """
    st = settings or TrainSettings()
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise TranscoderError("texts is empty: give the training corpus as a list of non-empty strings")
    if st.k < 1 or st.k > st.n_features:
        raise TranscoderError(f"k={st.k}: expected 1..n_features={st.n_features}")
    if not 0.0 <= st.lr_decay <= 1.0:
        raise TranscoderError(f"lr_decay={st.lr_decay!r}: expected a fraction of the steps in 0..1")
    if not 0.0 <= st.skip_fit < 1.0:
        raise TranscoderError(f"skip_fit={st.skip_fit!r}: expected a fraction of the first epoch's batches in "
                              "[0, 1) (0 learns the skip by gradient descent)")
    if st.ridge < 0 or st.step_tokens < 0:
        raise TranscoderError(f"ridge={st.ridge!r}, step_tokens={st.step_tokens!r}: expected values >= 0")
    if st.layers is not None and any(not 0 <= la < lm.n_layers for la in st.layers):
        raise TranscoderError(f"layers={st.layers}: expected values in 0..{lm.n_layers - 1}")
    corpus_hash = stable_hash(list(texts))
    key = stable_hash({"model": lm.name, "corpus": corpus_hash, "settings": asdict(st),
                       "code": code_version("transcoders", "training", "activations", "sites", "models", "bundled")})
    folder = Path(folder) if folder is not None else cache_dir("transcoders") / lm.name / key
    if (folder / "config.json").is_file():
        return TranscoderSet.load(folder)
    n_batches = math.ceil(len(texts) / st.batch_size)
    trainer = _Trainer(lm, st, corpus_hash, n_batches)
    ckpt = folder / "checkpoint.safetensors"
    if ckpt.is_file():
        trainer.load_checkpoint(ckpt)
    torch.manual_seed(st.seed)
    bar = tqdm(total=st.epochs * n_batches, initial=trainer.step, desc="train transcoders", disable=not progress)
    done_now = 0
    while trainer.epoch < st.epochs:
        batches = text_batches(texts, st.batch_size, st.seed + trainer.epoch)
        start = trainer.step - trainer.epoch * n_batches
        for batch in batches[start:]:
            xin, xout, mask, _ = mlp_io(lm, batch, trainer.layers, st.max_length)
            row = trainer.train_batch(xin, xout, mask)
            bar.update(1)
            if math.isnan(row["fve_mean"]):
                bar.set_postfix_str("fitting the skip")
            else:
                bar.set_postfix(fve=f"{row['fve_mean']:.3f}")
            done_now += 1
            if trainer.step % st.checkpoint_every == 0:
                trainer.save_checkpoint(ckpt)
            if stop_after_steps is not None and done_now >= stop_after_steps:
                trainer.save_checkpoint(ckpt)
                bar.close()
                return trainer.transcoders()
        trainer.epoch += 1
        trainer.save_checkpoint(ckpt)
    bar.close()
    out = trainer.transcoders()
    out.save(folder)
    atomic_write_text(folder / "history.json", json.dumps(trainer.history))
    ckpt.unlink(missing_ok=True)
    return out
