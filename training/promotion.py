"""Champion alias moves, rollback and the champion's history (the gate that decides is training/gate.py).

Serving follows the alias ``champion``; ``previous`` points at the version it replaced, so a bad
promotion is undone with one command. Every alias move is recorded twice:

- in the registry itself, as a registered-model tag ``champion_move.<seq>`` holding the move as JSON
  (who, when, why, metrics), readable from any MLflow client and the UI; the promoted version also
  gets ``champion_since`` / ``promoted_by`` / ``promotion_reason`` tags;
- appended to ``mlruns/champion-history.jsonl`` (one JSON line per move), for `tail` and `grep`.

The registry is the source of truth: ``champion_history`` reads the tags.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Literal

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from nexttouch.registry_io import alias_version
from nexttouch.settings import Settings
from nexttouch.tracking import configure_mlflow

PREVIOUS = "previous"
MOVE_TAG = "champion_move."
HISTORY_FILE = "champion-history.jsonl"
HISTORY_HEADING = "### Champion history"  # the section of the registered model's description


@dataclass(frozen=True)
class Move:
    """One change of the champion alias."""

    seq: int
    at: str
    kind: Literal["promote", "rollback"]
    champion: str
    replaced: str | None  # the champion before this move
    previous: str | None  # where ``previous`` points after this move
    by: str
    why: str
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class NothingToRollBack(RuntimeError):
    """There is no ``previous`` version to restore."""


def actor(what: str) -> str:
    """Who/what moved the alias: the command, the OS user and the host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{what} ({user}@{socket.gethostname()})"


def promote(settings: Settings, version: str, by: str, why: str, metrics: Mapping[str, float] | None = None) -> Move:
    """champion <- ``version``; previous <- the champion it replaces (unchanged if there was none)."""
    old = alias_version(settings, settings.champion_alias)
    if old == version:
        raise ValueError(f"version {version} is already {settings.champion_alias}")
    previous = old if old is not None else alias_version(settings, PREVIOUS)
    return _move(settings, "promote", version, old, previous, by, why, metrics or {})


def rollback(settings: Settings, by: str, why: str = "rollback") -> Move:
    """champion <- previous; previous <- the version that ``previous`` itself replaced (or cleared).

    Rolling back again walks further back through the champion's history; it refuses when
    there is nothing left.
    """
    current = alias_version(settings, settings.champion_alias)
    target = alias_version(settings, PREVIOUS)
    if target is None or current is None:
        raise NothingToRollBack(
            f"nothing to roll back to: {settings.model_name} has no @{PREVIOUS} version"
            + ("" if current is None else f" (champion is v{current})")
        )
    # Where ``previous`` pointed while ``target`` was champion the last time.
    before = next((m.previous for m in reversed(champion_history(settings)) if m.champion == target), None)
    after = before if before not in (current, target) else None
    return _move(settings, "rollback", target, current, after, by, why, {})


def champion_history(settings: Settings) -> list[Move]:
    """Every alias move, oldest first, read back from the registered model's tags."""
    configure_mlflow(settings)
    try:
        tags = MlflowClient().get_registered_model(settings.model_name).tags
    except MlflowException:
        return []
    moves = [Move(**json.loads(v)) for k, v in tags.items() if k.startswith(MOVE_TAG)]
    return sorted(moves, key=lambda m: m.seq)


def _move(
    settings: Settings,
    kind: Literal["promote", "rollback"],
    champion: str,
    replaced: str | None,
    previous: str | None,
    by: str,
    why: str,
    metrics: Mapping[str, float],
) -> Move:
    client = MlflowClient()
    name = settings.model_name
    run_id = client.get_model_version(name, champion).run_id
    seq = max((m.seq for m in champion_history(settings)), default=0) + 1
    at = datetime.now(UTC).isoformat(timespec="seconds")
    move = Move(seq, at, kind, champion, replaced, previous, by, why, run_id, {k: float(v) for k, v in metrics.items()})
    before = {alias: alias_version(settings, alias) for alias in (settings.champion_alias, PREVIOUS)}
    try:
        _point(client, name, settings.champion_alias, champion)
        _point(client, name, PREVIOUS, previous)
        client.set_registered_model_tag(name, f"{MOVE_TAG}{seq:06d}", json.dumps(asdict(move)))
    except Exception:
        for alias, version in before.items():  # no alias move without its record: put both back
            _point(client, name, alias, version)
        raise
    for key, value in {"champion_since": at, "promoted_by": by, "promotion_reason": why}.items():
        client.set_model_version_tag(name, champion, key, value)
    describe_history(client, name, champion_history(settings))
    with (settings.mlruns_dir / HISTORY_FILE).open("a", encoding="utf-8") as out:
        out.write(json.dumps({"model": name, **asdict(move)}) + "\n")
    return move


def describe_history(client: MlflowClient, name: str, moves: list[Move]) -> None:
    """The champion history, newest first, as a table at the end of the registered model's description:
    the model's page shows it, where the tags hold one JSON document per move."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = [
        f"| {m.seq} | {m.at[:16].replace('T', ' ')} UTC | {m.kind} | v{m.champion} "
        f"| {'v' + m.replaced if m.replaced else '-'} | {cell(m.by)} | {cell(m.why)} |"
        for m in reversed(moves)
    ]
    table = "| # | when | move | champion | replaced | by | why |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    about = (client.get_registered_model(name).description or "").split(HISTORY_HEADING)[0].strip()
    client.update_registered_model(name, f"{about}\n\n{HISTORY_HEADING}\n\n{table}".strip())


def _point(client: MlflowClient, name: str, alias: str, version: str | None) -> None:
    """Set the alias, or remove it for ``None``."""
    if version is None:
        client.delete_registered_model_alias(name, alias)  # a no-op when it is not set
    else:
        client.set_registered_model_alias(name, alias, version)
