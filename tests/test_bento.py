"""The Bento: built from the repository root, it holds every module of the code and the lock's pins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENTOFILE = ROOT / "serving" / "bentofile.yaml"
EXPORT = ["export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "--no-header", "--no-annotate"]


def _config():
    from bentoml._internal.bento.build_config import BentoBuildConfig

    return BentoBuildConfig.from_file(str(BENTOFILE))


def test_the_bento_holds_every_module_of_the_packages() -> None:
    from bentoml._internal.bento.build_config import BentoPathSpec

    config = _config()
    spec = BentoPathSpec(config.include, config.exclude, str(ROOT))
    code = [
        p.relative_to(ROOT).as_posix()
        for package in ("nexttouch", "serving", "features", "training")
        for p in (ROOT / package).rglob("*.py")
        if "__pycache__" not in p.parts
    ]
    assert "nexttouch/engine/engine.py" in code
    assert [p for p in code if not spec.includes(p)] == []
    assert spec.includes("nexttouch/catalog.yaml") and spec.includes("features/feature_store.yaml")
    assert not spec.includes("tests/conftest.py")


def test_the_pins_are_the_lock() -> None:
    uv = Path(sys.executable).parent / "uv"
    exported = subprocess.run([str(uv), *EXPORT], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    pinned = (ROOT / _config().python.requirements_txt).read_text()
    assert pinned == exported, "regenerate: uv " + " ".join(EXPORT) + " -o serving/requirements.txt"
    assert "bentoml==" in pinned and "lightgbm==" in pinned


def test_a_build_from_serving_cannot_find_its_requirements() -> None:
    # The pins are named relative to the root: with serving/ as the build context BentoML stops at
    # this path instead of writing a Bento without the packages beside serving/.
    requirements = yaml.safe_load(BENTOFILE.read_text())["python"]["requirements_txt"]
    assert (ROOT / requirements).is_file()
    assert not (BENTOFILE.parent / requirements).exists()
