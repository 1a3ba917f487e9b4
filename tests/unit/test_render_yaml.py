"""render.yaml is a valid Blueprint for this service."""

import os

import yaml

from harness.service import ROOT
from settings import SPEC_BY_ENV

RENDER_ONLY = {"PYTHON_VERSION"}


def load():
    with open(os.path.join(ROOT, "render.yaml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_the_web_service_runs_gunicorn_with_a_health_check():
    web = next(s for s in load()["services"] if s["type"] == "web")
    assert web["startCommand"] == "gunicorn -c gunicorn.conf.py app:app"
    assert web["healthCheckPath"] == "/health"
    assert web["buildCommand"] == "pip install --require-hashes -r requirements.lock"
    assert isinstance(web["numInstances"], int) and web["numInstances"] >= 1


def test_every_env_var_is_a_known_setting_and_every_secret_is_sync_false():
    web = next(s for s in load()["services"] if s["type"] == "web")
    for var in web["envVars"]:
        assert var["key"] in SPEC_BY_ENV or var["key"] in RENDER_ONLY, var["key"]
        spec = SPEC_BY_ENV.get(var["key"])
        if spec is not None and spec.secret and var["key"] != "REDIS_URL":
            assert var.get("sync") is False, var["key"]


def test_redis_url_comes_from_a_noeviction_key_value_instance():
    doc = load()
    web = next(s for s in doc["services"] if s["type"] == "web")
    kv = next(s for s in doc["services"] if s["type"] == "keyvalue")
    redis_var = next(v for v in web["envVars"] if v["key"] == "REDIS_URL")
    assert redis_var["fromService"] == {"type": "keyvalue", "name": kv["name"], "property": "connectionString"}
    assert kv["maxmemoryPolicy"] == "noeviction"


def test_the_lease_ttl_is_set_explicitly_to_60_seconds():
    web = next(s for s in load()["services"] if s["type"] == "web")
    assert {v["key"]: v.get("value") for v in web["envVars"]}["REDIS_LOCK_TTL_SECONDS"] == "60"


def test_render_grace_holds_the_shutdown_budgets():
    import settings

    web = next(s for s in load()["services"] if s["type"] == "web")
    assert web["maxShutdownDelaySeconds"] == settings.RENDER_SHUTDOWN_GRACE_SECONDS


# CVE-2023-27043 (email.utils taking an address-looking display name for the address) is fixed in 3.11 from 3.11.10
# on (CPython Misc/NEWS.d/3.11.10.rst, gh-102988). The service does not rely on it (email_processing/sender.py parses
# From itself, proven on the 3.11.7 CI runs), but what Render runs has the fix as well.
FIRST_311_WITH_THE_FIX = (3, 11, 10)
CI_PYTHON = "3.11.7"


def pinned_python() -> str:
    web = next(s for s in load()["services"] if s["type"] == "web")
    return {v["key"]: v.get("value") for v in web["envVars"]}["PYTHON_VERSION"]


def test_render_runs_an_exactly_pinned_python_3_11_with_the_cve_2023_27043_fix():
    version = pinned_python()
    parts = tuple(int(part) for part in version.split("."))
    assert len(parts) == 3, f"PYTHON_VERSION {version!r} must name one release"
    assert parts[:2] == (3, 11) and parts >= FIRST_311_WITH_THE_FIX, version


def test_the_readme_names_the_pinned_python_and_the_one_ci_runs():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    assert f"`PYTHON_VERSION={pinned_python()}`" in readme
    assert f"CI runs Python {CI_PYTHON}" in readme
