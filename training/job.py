"""The training step end to end: decision log -> training set -> model -> MLflow registry."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass

import pandas as pd

from nexttouch.catalog import Catalog
from nexttouch.schemas import DECIDED_AT
from nexttouch.settings import Settings
from training.dataset import training_set
from training.registry import Registered, log_and_register
from training.train import fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainReport:
    registered: Registered
    metrics: dict[str, float]
    rows: int
    unlabelled: int


def run_training(settings: Settings, catalog: Catalog) -> TrainReport:
    decisions = pd.read_parquet(settings.raw_dir / "decisions.parquet")
    data = training_set(settings, decisions)
    result = fit(data, catalog)
    tags = {
        "data_window": f"{data[DECIDED_AT].min().isoformat()} .. {data[DECIDED_AT].max().isoformat()}",
        "feature_service": settings.feature_service,
        "code_version": _git_commit(),
        "catalog": ",".join(catalog.names),
    }
    registered = log_and_register(settings, result.model, result.params, result.metrics, data, tags)
    log.info("registered %s version %s (run %s)", settings.model_name, registered.version, registered.run_id)
    unlabelled = int(decisions["outcome"].isna().sum())
    return TrainReport(registered, result.metrics, len(data), unlabelled)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
