"""Shared fixtures. Servers that tests start live in tests/servers.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "datasets"
needs_shared = pytest.mark.skipif(not SHARED.exists(),
                                  reason=f"{SHARED} absent: real-data tests need ../shared/datasets")
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

try:  # property-based tests (tests/test_contract_fuzz.py): bounded, and reproducible in CI
    from hypothesis import HealthCheck, settings

    settings.register_profile("dev", max_examples=40, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True, print_blob=True)
    settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true") else "dev")
except ImportError:  # hypothesis is a test extra; only the fuzz tests need it
    pass
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture
def repo() -> Path:
    return REPO


def small_params_dict(**sections) -> dict:
    """The repo's params.yaml with a tiny synthetic feed, and section overrides."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["synthetic"].update({"n_kpis": 2, "start": "2026-01-01", "end": "2026-01-08"})
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    return raw


@pytest.fixture
def small_params(tmp_path):
    """A validated Params for a 2-KPI, 7-day synthetic feed with every path under tmp_path."""
    from pipeline.params import parse_params

    raw = small_params_dict()
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    return parse_params(raw)


@pytest.fixture
def chromium():
    """A headless Chromium (selenium) that keeps the page's console log (``get_log("browser")``)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: run `make browser` (Debian chromium + chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: run `make install`")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


from tests.servers import s3_server  # noqa: E402,F401  (session-scoped real S3: weed mini)
