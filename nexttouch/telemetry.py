"""MLflow, BentoML and Feast report usage by default: nexttouch switches that off, here and only here."""

from __future__ import annotations

import os

TELEMETRY_OFF = {
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "FEAST_USAGE": "False",
}


def switch_off() -> None:
    """Telemetry off for this process and the processes it starts (unless set otherwise explicitly)."""
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)
