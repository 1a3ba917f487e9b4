"""OPS_WEBHOOK_URL / OPS_WEBHOOK_SECRET: the reserved target ``ops``, its rules, and that no other target can take
its id (environment and configuration file)."""

from __future__ import annotations

import textwrap

import pytest

from config import OPS_TARGET_ID, ServiceConfig, TargetConfig
from config_file import collect_config_errors, load_config_file
from settings import ConfigError, Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OPS_URL = "https://alerts.example.com/hook/ops-capability"


def test_without_ops_webhook_url_alerts_are_off():
    assert ServiceConfig.from_settings(Settings.from_env({})).ops is None


def test_ops_webhook_url_and_secret_build_the_reserved_signed_target_with_one_thread():
    settings = Settings.from_env({"OPS_WEBHOOK_URL": OPS_URL, "OPS_WEBHOOK_SECRET": SECRET})
    ops = ServiceConfig.from_settings(settings).ops
    assert ops is not None
    assert (ops.id, ops.url, ops.secret, ops.concurrency) == (OPS_TARGET_ID, OPS_URL, SECRET, 1)
    assert OPS_URL not in repr(ops) and SECRET not in repr(ops) and SECRET not in repr(settings)


@pytest.mark.parametrize(("env", "variable"), [
    ({"OPS_WEBHOOK_URL": OPS_URL}, "OPS_WEBHOOK_SECRET"),                       # alerts are always signed
    ({"OPS_WEBHOOK_SECRET": SECRET}, "OPS_WEBHOOK_SECRET"),                     # a secret alone signs nothing
    ({"OPS_WEBHOOK_URL": OPS_URL, "OPS_WEBHOOK_SECRET": "nope"}, "OPS_WEBHOOK_SECRET"),
    ({"OPS_WEBHOOK_URL": "http://alerts.example.com/x", "OPS_WEBHOOK_SECRET": SECRET}, "OPS_WEBHOOK_URL"),
    ({"OPS_WEBHOOK_URL": "ftp://alerts.example.com/x", "OPS_WEBHOOK_SECRET": SECRET}, "OPS_WEBHOOK_URL"),
    ({"OPS_WEBHOOK_URL": OPS_URL, "OPS_WEBHOOK_SECRET": SECRET, "OPS_WEBHOOK_CA_FILE": "/nonexistent.pem"},
     "OPS_WEBHOOK_CA_FILE"),
])
def test_a_bad_ops_setting_is_a_config_error_naming_it(env, variable):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == variable
    assert SECRET not in str(caught.value)


def test_a_local_http_receiver_is_allowed_with_ops_webhook_allow_insecure():
    settings = Settings.from_env({"OPS_WEBHOOK_URL": "http://127.0.0.1:9/hook", "OPS_WEBHOOK_SECRET": SECRET,
                                  "OPS_WEBHOOK_ALLOW_INSECURE": "true"})
    ops = ServiceConfig.from_settings(settings).ops
    assert ops is not None and ops.allow_insecure


def test_the_ops_url_path_is_redacted_from_logs_like_the_webhook_urls():
    settings = Settings.from_env({"OPS_WEBHOOK_URL": OPS_URL, "OPS_WEBHOOK_SECRET": SECRET})
    assert "/hook/ops-capability" in settings.secret_values()


def test_ops_webhook_variables_are_global_so_they_combine_with_a_configuration_file(tmp_path):
    path = tmp_path / "render-signal.yaml"
    path.write_text("targets:\n  - id: make\n    url: https://hook.example.com/x\n", encoding="utf-8")
    settings = Settings.from_env({"RENDER_SIGNAL_CONFIG": str(path), "OPS_WEBHOOK_URL": OPS_URL,
                                  "OPS_WEBHOOK_SECRET": SECRET})
    config, _ = load_config_file(str(path), {}, settings)
    assert config.ops is not None and [target.id for target in config.targets] == ["make"]


def test_a_target_named_ops_in_the_configuration_file_is_an_error_at_its_path(tmp_path):
    path = tmp_path / "render-signal.yaml"
    path.write_text(textwrap.dedent("""
        targets:
          - id: ops
            url: https://hook.example.com/x
    """), encoding="utf-8")
    errors = collect_config_errors(str(path), {}, Settings())
    assert any(error.startswith("CONFIG: targets[0].id: ops is reserved") for error in map(str, errors)), errors


def test_no_service_config_can_hold_a_target_with_the_reserved_id():
    with pytest.raises(ValueError, match="reserved"):
        ServiceConfig(targets=(TargetConfig(id=OPS_TARGET_ID, url="https://x.example.com/"),))
    assert ServiceConfig(targets=(TargetConfig(id="make", url="https://x.example.com/"),)).delivered_targets[0].id == \
        "make"
