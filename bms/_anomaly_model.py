"""The isolation-forest model: fit, score, explain, save and load with its metadata.

A model is a folder ``models/<model_version>/`` in the state directory holding
``model.joblib`` (the fitted ``sklearn.ensemble.IsolationForest``, nothing else) and
``metadata.json``: scikit-learn and numpy versions, feature list, training window,
contamination, training row count, a hash of the training data, the score threshold, the
fleet's normal range of every feature, and the SHA-256 of ``model.joblib``. Loading
refuses a model whose metadata names another scikit-learn version, or whose file does not
match its checksum (``ModelRefusedError``); the caller refits. Only files in our own state
folder are ever unpickled, and only after the checksum matched.

Isolation forest: Liu, Ting & Zhou, "Isolation Forest", Proc. IEEE ICDM 2008, 413-422
(doi:10.1109/ICDM.2008.17): the anomaly score is ``s = 2**(-E[h(x)] / c(psi))`` with
``h`` the path length of ``x`` in a random tree built on ``psi`` samples; ``s`` near 1
is anomalous, well below 0.5 normal. scikit-learn's ``score_samples`` returns ``-s``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bms._errors import BmsError
from bms._lake import atomic_write_bytes, fsync_dir

FloatArray = npt.NDArray[np.float64]

#: Layout version of the model folder and its metadata.
MODEL_FORMAT = 1
MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
#: Quantiles of the training rows that bound a feature's "fleet normal range".
NORMAL_RANGE_QUANTILES = (0.005, 0.5, 0.995)


class ModelRefusedError(BmsError):
    """A saved model may not be loaded (other scikit-learn version, bad checksum).

    Attributes
    ----------
    reason : str
        ``sklearn_version``, ``checksum``, ``format`` or ``features``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FeatureStats:
    """Fleet normal range of one feature over the training rows (robust)."""

    low: float  # 0.5 % quantile
    median: float
    high: float  # 99.5 % quantile
    scale: float  # 1.4826 x MAD, floored so it is never zero


@dataclass(frozen=True)
class AnomalyModel:
    """A fitted isolation forest with everything needed to use and audit it."""

    version: str
    valid_from: date  # first date this model scores
    estimator: Any  # sklearn.ensemble.IsolationForest
    features: tuple[str, ...]
    threshold: float  # score above this = anomalous row (1 - contamination quantile)
    stats: dict[str, FeatureStats]
    metadata: dict[str, Any]

    def impute(self, x: FloatArray) -> FloatArray:
        """Replace missing values (NaN) by the feature's training median."""
        med = np.array([self.stats[f].median for f in self.features])
        return np.where(np.isnan(x), med[None, :], x)

    def score(self, x: FloatArray) -> FloatArray:
        """Anomaly score ``s`` in (0, 1] of each row (higher = more anomalous). [-]"""
        if len(x) == 0:
            return np.zeros(0)
        xi = np.ascontiguousarray(self.impute(x), dtype=np.float32)
        return np.asarray(-self.estimator.score_samples(xi), dtype=np.float64)

    def robust_distance(self, x: FloatArray) -> FloatArray:
        """Distance of each value from the fleet median in robust sigmas, per feature. [-]"""
        med = np.array([self.stats[f].median for f in self.features])
        scale = np.array([self.stats[f].scale for f in self.features])
        return np.asarray(np.abs(x - med[None, :]) / scale[None, :])


def sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


def data_hash(x: FloatArray, features: tuple[str, ...], params: dict[str, Any]) -> str:
    """SHA-256 of the training matrix, its feature names and the fit parameters."""
    h = hashlib.sha256()
    h.update(json.dumps({"features": list(features), "params": params}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    return h.hexdigest()


def feature_stats(x: FloatArray, features: tuple[str, ...]) -> dict[str, FeatureStats]:
    """Robust normal range of each column of ``x`` (NaNs ignored)."""
    out: dict[str, FeatureStats] = {}
    for j, name in enumerate(features):
        col = x[:, j]
        col = col[~np.isnan(col)]
        if len(col) == 0:
            out[name] = FeatureStats(0.0, 0.0, 0.0, 1.0)
            continue
        lo, med, hi = (float(v) for v in np.quantile(col, NORMAL_RANGE_QUANTILES))
        mad = float(np.median(np.abs(col - med))) * 1.4826
        spread = (hi - lo) / 5.15 if hi > lo else 0.0  # 99 % range of a normal = 5.15 sigma
        scale = max(mad, spread / 4.0, 1e-6)
        out[name] = FeatureStats(lo, med, hi, scale)
    return out


def fit_model(
    x: FloatArray,
    features: tuple[str, ...],
    *,
    valid_from: date,
    training_start: date,
    training_end: date,
    contamination: float,
    random_state: int,
    n_estimators: int,
    max_samples: int,
    n_vehicles: int,
    reason: str,
    threshold_sigmas: float = 5.0,
) -> AnomalyModel:
    """Fit an isolation forest on the training rows ``x`` (rows x features).

    Parameters
    ----------
    x : ndarray, shape (n, k)
        Training feature rows, sorted deterministically by the caller; NaN = missing
        (imputed with the column median before fitting).
    contamination : float
        Share of training rows above the score threshold. [-]
    reason : str
        Why this fit happened (``schedule``, ``drift``, ``sklearn_version``...); recorded.
    threshold_sigmas : float
        Score threshold = median + this many robust sigmas of the training scores. [-]

    Raises
    ------
    BmsError
        Fewer than 2 training rows.
    """
    from sklearn.ensemble import IsolationForest

    if len(x) < 2:
        raise BmsError(f"cannot fit the anomaly model on {len(x)} training rows")
    stats = feature_stats(x, features)
    med = np.array([stats[f].median for f in features])
    xi = np.ascontiguousarray(np.where(np.isnan(x), med[None, :], x), dtype=np.float32)
    fit_params = {
        "contamination": contamination,
        "random_state": random_state,
        "n_estimators": n_estimators,
        "max_samples": max_samples,
    }
    est = IsolationForest(
        n_estimators=n_estimators,
        max_samples=min(max_samples, len(xi)),
        contamination=contamination,
        random_state=random_state,
        n_jobs=1,
    ).fit(xi)
    train_scores = -est.score_samples(xi)
    quantile_threshold = float(np.quantile(train_scores, 1.0 - contamination))
    # Robust threshold: median + k sigma (1.4826 MAD) of the training scores. Unlike the
    # contamination quantile it does not move when faulty vehicles (whose faults grow
    # for weeks before anyone flags them) fill the tail of the training window.
    med_score = float(np.median(train_scores))
    sigma_score = 1.4826 * float(np.median(np.abs(train_scores - med_score)))
    threshold = med_score + threshold_sigmas * max(sigma_score, 1e-6)
    digest = data_hash(x, features, {**fit_params, "sklearn": sklearn_version()})
    version = f"if-{valid_from.strftime('%Y%m%d')}-{digest[:10]}"
    import numpy

    metadata: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "model_version": version,
        "algorithm": "sklearn.ensemble.IsolationForest",
        "sklearn_version": sklearn_version(),
        "numpy_version": numpy.__version__,
        "features": list(features),
        "valid_from": valid_from.isoformat(),
        "training_window": {
            "start": training_start.isoformat(),
            "end": training_end.isoformat(),
            "days": (training_end - training_start).days + 1,
        },
        "contamination": contamination,
        "random_state": random_state,
        "n_estimators": n_estimators,
        "max_samples": int(min(max_samples, len(xi))),
        "training_rows": len(x),
        "training_vehicles": n_vehicles,
        "data_sha256": digest,
        "threshold": threshold,
        "threshold_sigmas": threshold_sigmas,
        "contamination_threshold": quantile_threshold,
        "training_score_median": med_score,
        "training_score_sigma": sigma_score,
        "training_share_above_threshold": float(np.mean(train_scores > threshold)),
        "feature_stats": {
            f: {"low": s.low, "median": s.median, "high": s.high, "scale": s.scale}
            for f, s in stats.items()
        },
        "reason": reason,
    }
    return AnomalyModel(version, valid_from, est, features, threshold, stats, metadata)


def model_dir(models_root: Path, version: str) -> Path:
    return models_root / version


def save_model(model: AnomalyModel, models_root: Path) -> Path:
    """Write ``model.joblib`` then ``metadata.json`` (with its checksum) atomically.

    The folder appears under its final name only when both files are durable, so a
    reader never sees a model without metadata.
    """
    import joblib

    buf = io.BytesIO()
    joblib.dump(model.estimator, buf)
    blob = buf.getvalue()
    meta = {**model.metadata, "model_sha256": hashlib.sha256(blob).hexdigest()}
    final = model_dir(models_root, model.version)
    models_root.mkdir(parents=True, exist_ok=True)
    tmp = models_root / f".{model.version}.{uuid.uuid4().hex}.tmp"
    try:
        atomic_write_bytes(blob, tmp / MODEL_FILE)
        atomic_write_bytes(_json_bytes(meta), tmp / METADATA_FILE)
        if final.exists():
            retire_model(models_root, model.version, "replaced")
        tmp.rename(final)
        fsync_dir(models_root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def retire_model(models_root: Path, version: str, why: str) -> Path:
    """Move a model folder to ``models/retired/`` (kept as evidence, never loaded)."""
    target = models_root / "retired" / f"{version}.{why}.{uuid.uuid4().hex[:8]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    model_dir(models_root, version).rename(target)
    fsync_dir(models_root)
    return target


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata of the model folder ``path``."""
    try:
        meta: dict[str, Any] = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelRefusedError(
            "format", f"model {path.name}: unreadable metadata ({exc})"
        ) from exc
    return meta


def list_models(models_root: Path) -> list[tuple[date, str]]:
    """``(valid_from, version)`` of every saved model, oldest first."""
    out: list[tuple[date, str]] = []
    if not models_root.is_dir():
        return out
    for d in sorted(models_root.glob("if-*")):
        if not (d / METADATA_FILE).is_file():
            continue
        try:
            meta = read_metadata(d)
            # listed under its folder's name, the name ``load_model`` reads it by (a folder
            # copied or renamed from another model is then refused there, and retired)
            out.append((date.fromisoformat(meta["valid_from"]), d.name))
        except (ModelRefusedError, KeyError, ValueError):
            continue
    return sorted(out)


def load_model(models_root: Path, version: str) -> AnomalyModel:
    """Load a saved model after checking its format, scikit-learn version and checksum.

    Raises
    ------
    ModelRefusedError
        Saved by another scikit-learn version, checksum mismatch, unknown format: the
        message says which and that the model has to be refitted.
    """
    path = model_dir(models_root, version)
    meta = read_metadata(path)
    if meta.get("format") != MODEL_FORMAT:
        raise ModelRefusedError(
            "format", f"model {version}: format {meta.get('format')!r}, expected {MODEL_FORMAT}"
        )
    if meta.get("model_version") != version:
        raise ModelRefusedError(
            "format",
            f"model {version}: its metadata names model {meta.get('model_version')!r} "
            "(a folder copied or renamed from another model); refusing to load it: "
            "it must be refitted",
        )
    running = sklearn_version()
    if meta.get("sklearn_version") != running:
        raise ModelRefusedError(
            "sklearn_version",
            f"model {version} was saved by scikit-learn {meta.get('sklearn_version')} but "
            f"this is scikit-learn {running}; refusing to load it (a pickled estimator is "
            "only safe with the version that wrote it): it must be refitted",
        )
    try:
        blob = (path / MODEL_FILE).read_bytes()
    except OSError as exc:
        raise ModelRefusedError(
            "format", f"model {version}: unreadable {MODEL_FILE} ({exc}); it must be refitted"
        ) from exc
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.get("model_sha256"):
        raise ModelRefusedError(
            "checksum",
            f"model {version}: {MODEL_FILE} has SHA-256 {digest[:16]}..., metadata says "
            f"{str(meta.get('model_sha256'))[:16]}...; refusing to load it: it must be refitted",
        )
    import joblib
    from sklearn.ensemble import IsolationForest

    try:
        # the checksum matched: these bytes are what the metadata's writer saved, but a
        # hand-made pair (file and checksum) may still hold anything
        est = joblib.load(io.BytesIO(blob))
    except Exception as exc:  # unpickling fails in many ways
        raise ModelRefusedError(
            "format", f"model {version}: {MODEL_FILE} does not load ({exc}); it must be refitted"
        ) from exc
    if not isinstance(est, IsolationForest):
        raise ModelRefusedError("format", f"model {version}: not an IsolationForest")
    try:
        features = tuple(str(f) for f in meta["features"])
        stats = {
            f: FeatureStats(
                float(s["low"]), float(s["median"]), float(s["high"]), float(s["scale"])
            )
            for f, s in meta["feature_stats"].items()
        }
        return AnomalyModel(
            version=version,
            valid_from=date.fromisoformat(meta["valid_from"]),
            estimator=est,
            features=features,
            threshold=float(meta["threshold"]),
            stats=stats,
            metadata=meta,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelRefusedError(
            "format", f"model {version}: incomplete metadata ({exc!r}); it must be refitted"
        ) from exc
