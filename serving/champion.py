"""The champion the service scores with, and a watcher that hands a new one over when the alias moves."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from nexttouch.model import DecisionModel
from nexttouch.registry_io import alias_version, load_version
from nexttouch.settings import Settings

log = logging.getLogger("nexttouch.champion")


@dataclass(frozen=True)
class Champion:
    model: DecisionModel
    version: str


def champion_version(settings: Settings) -> str:
    """The registry version the champion alias points at now."""
    version = alias_version(settings, settings.champion_alias)
    if version is None:
        raise LookupError(f"model {settings.model_name} has no {settings.champion_alias!r} alias: train one first")
    return version


def load_champion(settings: Settings, version: str | None = None) -> Champion:
    """The champion's decision model (or that of ``version``), through the registry's one loader."""
    version = version or champion_version(settings)
    return Champion(load_version(settings, version), version)


class ChampionWatcher:
    """Polls the champion alias in a background thread; a new version is loaded fully, then handed over.

    ``on_new`` receives the loaded champion and swaps one reference: requests in flight finish with
    the model they started with, the next ones use the new one. A registry that cannot be reached is
    logged and retried at the next poll; serving goes on with the model it has.
    """

    def __init__(self, settings: Settings, current: str, on_new: Callable[[Champion], None]) -> None:
        self.settings = settings
        self.version = current
        self.on_new = on_new
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="champion-watcher", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.champion_poll_s):
            try:
                self.check()
            except Exception as exc:  # keep serving with the current model
                log.warning("champion check failed: %s: %s", type(exc).__name__, exc)

    def check(self) -> bool:
        """Load and hand over the champion if the alias moved; True when it did."""
        version = champion_version(self.settings)
        if version == self.version:
            return False
        champion = load_champion(self.settings, version)
        self.on_new(champion)
        log.info("champion %s v%s -> v%s", self.settings.model_name, self.version, version)
        self.version = version
        return True

    def stop(self) -> None:
        self._stop.set()
