"""The judges' classifiers: a multinomial logistic regression whose C is chosen by what generalises across
writing registers and whose probabilities are temperature-calibrated, stored as safetensors (never
pickled); and the hashed word and character n-gram features the tuning judges read (chapter 02)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .cache import cache_dir, stable_hash
from .corpora import LABELS
from .embeddings import JudgeError, store

# the judging stack's code, part of every stored fit's file name: a change to any of it refits
CODE = ("classifiers", "corpora", "embeddings", "judges")


def fit_cached(name: str, key: dict, X_fn, y: np.ndarray, C: float, seed: int):
    """Fit (or load) a multinomial logistic regression; cached as safetensors, never pickled."""
    from sklearn.linear_model import LogisticRegression

    def fit():
        clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(X_fn(), y)
        return {"classes": clf.classes_, "coef": clf.coef_, "intercept": clf.intercept_}

    t = store(cache_dir("judges") / f"{name}-{stable_hash(key)}.safetensors", fit, code=CODE)
    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    clf.classes_, clf.coef_, clf.intercept_ = t["classes"], t["coef"], t["intercept"]
    clf.n_features_in_ = clf.coef_.shape[1]
    return clf


# The settings both emotion judges choose among, by one rule (see :func:`choose_c`).
C_CANDIDATES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
# How a calibrated linear judge is fitted; part of every such judge's cache key, so that changing the code's
# settings here refits instead of serving weights fitted the old way.
FIT_SETTINGS = {"max_iter": 3000, "max_folds": 8, "rule": "best mean accuracy on the group left out, ties to the "
                "smaller C", "temperature": "log T bounded in [-3, 3], out-of-group logits", "version": 2}


def choose_c(X, y: np.ndarray, groups: Sequence[str], seed: int = 0,
             candidates: Sequence[float] = C_CANDIDATES, max_folds: int = FIT_SETTINGS["max_folds"]
             ) -> tuple[float, np.ndarray, dict]:
    """The regularisation of a logistic regression chosen by what generalises across writing registers.

    Rule (fixed before any validation text was written): leave one ``group`` (register) out at a time,
    fit on the rest, and take the candidate with the best mean held-out accuracy over groups; ties go to
    the smaller C (the simpler model). With more than ``max_folds`` groups, whole groups are dealt
    round-robin (in sorted order) into ``max_folds`` folds, each left out in turn. Returns
    ``(C, out_of_fold_logits_at_C, {C: mean accuracy})``; the out-of-fold logits fit the temperature
    (:func:`fit_temperature`).
    """
    from sklearn.linear_model import LogisticRegression

    groups = np.asarray(groups)
    uniq = sorted(set(groups.tolist()))
    if len(uniq) < 2:
        raise JudgeError(f"choose_c needs texts from at least two groups, got {uniq}")
    if len(uniq) > max_folds:  # many groups (games): whole groups dealt round-robin into max_folds folds
        fold = {g: f"fold-{i % max_folds}" for i, g in enumerate(uniq)}
        groups = np.array([fold[g] for g in groups.tolist()])
        uniq = sorted(set(fold.values()))
    # one estimator per held-out group, refitted along the ascending candidates from its previous solution
    fits = {g: LogisticRegression(max_iter=FIT_SETTINGS["max_iter"], random_state=seed, warm_start=True)
            for g in uniq}
    scores, oof = {}, {}
    for c in sorted(candidates):
        logits = np.zeros((len(y), len(LABELS)))
        accs = []
        for g in uniq:
            te = groups == g
            clf = fits[g].set_params(C=c).fit(X[~te], y[~te])
            z = clf.decision_function(X[te])
            logits[np.ix_(te, clf.classes_.astype(int))] = z
            accs.append(float(np.mean(clf.classes_[z.argmax(1)] == y[te])))
        scores[c], oof[c] = float(np.mean(accs)), logits
    best = max(scores.values())
    c = min(k for k, v in scores.items() if v >= best - 1e-12)
    return c, oof[c], scores


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T that minimises the log-loss of ``softmax(logits / T)`` on held-out logits."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    def nll(log_t):
        return -float(np.mean(log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(y)), y]))

    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


class CalibratedLinear:
    """A multinomial logistic regression with a chosen C and a temperature, stored as safetensors."""

    def __init__(self, name: str, key: dict, X_fn, y: np.ndarray, groups: Sequence[str], seed: int,
                 max_folds: int = FIT_SETTINGS["max_folds"]):
        from sklearn.linear_model import LogisticRegression

        def fit():
            X = X_fn()
            # hashed n-grams fill a few thousand of 2**17 columns: fit on the columns some text uses (an
            # unused column's weight stays 0 under L2), then put the weights back in place
            X = X.tocsr() if hasattr(X, "tocsr") else X
            cols = np.unique(X.indices) if hasattr(X, "indices") else None
            Xfit = X if cols is None else X[:, cols]
            c, oof, cv = choose_c(Xfit, y, groups, seed, max_folds=max_folds)
            clf = LogisticRegression(C=c, max_iter=FIT_SETTINGS["max_iter"], random_state=seed).fit(Xfit, y)
            coef = clf.coef_
            if cols is not None:
                coef = np.zeros((clf.coef_.shape[0], X.shape[1]))
                coef[:, cols] = clf.coef_
            return {"classes": clf.classes_, "coef": coef.astype(np.float32), "intercept": clf.intercept_,
                    "C": np.array([c]), "temperature": np.array([fit_temperature(oof, y)]),
                    "cv_c": np.array(sorted(cv)), "cv_accuracy": np.array([cv[k] for k in sorted(cv)])}

        # chapters run in parallel: the first to need a judge fits it, the others wait and load it
        t = store(cache_dir("judges") / f"{name}-{stable_hash({**key, 'fit': FIT_SETTINGS})}.safetensors", fit,
                  code=CODE)
        self.classes = t["classes"].astype(int)
        self.coef, self.intercept = t["coef"], t["intercept"]
        self.C, self.temperature = float(t["C"][0]), float(t["temperature"][0])
        # leave-one-register-out accuracy of each candidate C (what the choice read)
        self.cv_accuracy = dict(zip(t["cv_c"].tolist(), t["cv_accuracy"].tolist()))

    def predict_proba(self, X) -> np.ndarray:
        from scipy.special import softmax

        z = np.asarray(X @ self.coef.T) + self.intercept
        out = np.zeros((z.shape[0], len(LABELS)))
        out[:, self.classes] = softmax(z / self.temperature, axis=1)
        return out


class NgramFeatures:
    """Word uni- and bigrams and character 2-5-grams, hashed (no vocabulary to store), with sublinear term
    frequencies, idf weights fitted on ``texts`` (cached as safetensors under ``name``) and unit norm."""

    N_FEATURES = 2 ** 17
    TOKENS = r"(?u)\b\w+\b|[!?]"
    # everything that shapes the features: part of the cache keys of the idf weights and of the judges using them
    SPEC = {"word": [1, 2], "char_wb": [2, 5], "n_features": N_FEATURES, "split": "half words, half characters",
            "token_pattern": TOKENS, "lowercase": True, "sublinear_tf": True, "idf": "log((1 + n) / (1 + df)) + 1",
            "norm": "l2"}

    def __init__(self, texts: Sequence[str], name: str, key: dict):
        def idf():
            df = np.bincount(self.counts(texts).indices, minlength=self.N_FEATURES)  # documents per feature
            return {"idf": (np.log((1 + len(texts)) / (1 + df)) + 1).astype(np.float32)}

        path = cache_dir("judges") / f"{name}-idf-{stable_hash({**key, 'features': self.SPEC})}.safetensors"
        self.idf = store(path, idf, code=CODE)["idf"]

    @classmethod
    def counts(cls, texts: Sequence[str]):
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import HashingVectorizer

        texts = [t if isinstance(t, str) else "" for t in texts]
        kw = {"n_features": cls.N_FEATURES // 2, "alternate_sign": False, "norm": None, "lowercase": True}
        words = HashingVectorizer(analyzer="word", ngram_range=(1, 2), token_pattern=cls.TOKENS, **kw)
        chars = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 5), **kw)
        return hstack([words.transform(texts), chars.transform(texts)]).tocsr()

    def __call__(self, texts: Sequence[str]):
        from sklearn.preprocessing import normalize

        X = self.counts(list(texts))
        X.data = 1 + np.log(X.data)  # sublinear term frequency
        return normalize(X.multiply(self.idf[None, :]).tocsr())

