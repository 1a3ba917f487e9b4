"""One rule for every URL the service connects to: https:// unless its *_ALLOW_INSECURE twin is true, and a
private CA from its *_CA_FILE twin; each refusal is the operator line ``CONFIG: <VAR>: <reason>``."""

from __future__ import annotations

import pytest

from config import ServiceConfig
from settings import ConfigError, Settings, load_settings_or_exit

R2 = {"R2_FETCH_ENABLED": "true", "R2_FETCH_TOKEN": "t"}
PRESIGN = {"R2_ACCESS_KEY_ID": "k", "R2_SECRET_ACCESS_KEY": "s", "R2_BUCKET_NAME": "b"}

CASES = [
    ("WEBHOOK_URL", "http://127.0.0.1:9/hook", "WEBHOOK_ALLOW_INSECURE", {}),
    ("R2_FETCH_ENDPOINT", "http://127.0.0.1:9/fetch", "R2_ALLOW_INSECURE", R2),
    ("R2_S3_ENDPOINT_URL", "http://127.0.0.1:9", "R2_S3_ALLOW_INSECURE", {**R2, **PRESIGN,
                                                                          "R2_FETCH_ENDPOINT": "https://w.example/"}),
]


@pytest.mark.parametrize(("variable", "url", "twin", "extra"), CASES)
def test_an_http_url_is_refused_unless_its_allow_insecure_twin_is_true(variable, url, twin, extra):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**extra, variable: url})
    assert str(refused.value).startswith(f"CONFIG: {variable}: must be https:// (set {twin}=true")
    assert Settings.from_env({**extra, variable: url, twin: "true"})
    assert Settings.from_env({**extra, variable: url.replace("http://", "https://")})


@pytest.mark.parametrize(("variable", "url", "twin", "extra"), CASES)
def test_the_refusal_is_printed_as_one_config_line_and_exits_3(variable, url, twin, extra, capsys):
    with pytest.raises(SystemExit) as stopped:
        load_settings_or_exit({**extra, variable: url})
    assert stopped.value.code == 3
    assert capsys.readouterr().err.startswith(f"CONFIG: {variable}: must be https://")


@pytest.mark.parametrize(("ca_variable", "extra"), [
    ("IMAP_CA_FILE", {}),
    ("WEBHOOK_CA_FILE", {"WEBHOOK_URL": "https://hook.example/x"}),
    ("R2_CA_FILE", {**R2, "R2_FETCH_ENDPOINT": "https://w.example/"}),
])
def test_a_ca_file_twin_must_exist(ca_variable, extra, tmp_path):
    with pytest.raises(ConfigError, match=f"^CONFIG: {ca_variable}: file not found$"):
        Settings.from_env({**extra, ca_variable: str(tmp_path / "missing.pem")})


def test_the_ca_file_twins_reach_the_target_and_r2_values(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed at start-up\n")
    config = ServiceConfig.from_settings(Settings.from_env({
        "WEBHOOK_URL": "https://hook.example/x", "WEBHOOK_CA_FILE": str(ca),
        **R2, "R2_FETCH_ENDPOINT": "http://127.0.0.1:9/", "R2_ALLOW_INSECURE": "true", "R2_CA_FILE": str(ca)}))
    assert config.target("default").ca_file == str(ca)
    assert (config.r2.ca_file, config.r2.allow_insecure) == (str(ca), True)
