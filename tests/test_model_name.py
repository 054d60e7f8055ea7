"""One registered model and one experiment per action catalog, unless a model name is set."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nexttouch.catalog import load_catalog
from nexttouch.settings import load_settings
from training.registry import experiment_name

EMAIL_CATALOG = Path(__file__).parent / "data" / "email_catalog.yaml"


def test_each_catalog_has_its_own_model_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEXTTOUCH_MODEL_NAME", raising=False)
    packaged = load_settings(project_dir=tmp_path)
    email = load_settings(project_dir=tmp_path, catalog_path=EMAIL_CATALOG)
    assert re.fullmatch(r"nexttouch-catalog-[0-9a-f]{8}", packaged.model_name)
    assert re.fullmatch(r"nexttouch-email_catalog-[0-9a-f]{8}", email.model_name)
    # A brand that changes its actions under the same file name gets a new model: no champion of the old ones.
    renamed = tmp_path / "catalog.yaml"
    renamed.write_text(EMAIL_CATALOG.read_text())
    other = load_settings(project_dir=tmp_path, catalog_path=renamed).model_name
    assert other.startswith("nexttouch-catalog-") and other != packaged.model_name
    assert experiment_name(packaged) == "Next best action: catalog.yaml (none, push, event_invite, advisor_call)"
    names = ", ".join(load_catalog(EMAIL_CATALOG).names)
    assert experiment_name(email) == f"Next best action: email_catalog.yaml ({names})"


def test_a_model_name_that_is_set_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTTOUCH_MODEL_NAME", "acme")
    assert load_settings(project_dir=tmp_path, catalog_path=EMAIL_CATALOG).model_name == "acme"
    assert load_settings(project_dir=tmp_path, model_name="brand-b").model_name == "brand-b"
    named = load_settings(project_dir=tmp_path)
    assert experiment_name(named) == "Next best action: acme (none, push, event_invite, advisor_call)"
