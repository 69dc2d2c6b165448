"""Security settings and renderers checked against the real tools: mosquitto_passwd's own hash,
openssl's view of the certificates, and the configuration's errors."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from workloads.bench import emqtt
from workloads.describe.config import ConfigError, load_stack
from workloads.describe.plan import build_plan
from workloads.describe.scenario import Scenario
from workloads.render.files import render_files, write_files
from workloads.render.security import ClientSecurity, generate, load_client, password_line


def test_password_line_matches_mosquitto_passwd(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(f), "alice", "s3cret-Ü"], check=True, capture_output=True)
    theirs = f.read_text().strip()
    user, _, rest = theirs.partition(":")
    _, kind, iterations, salt, _digest = rest.split("$")
    assert kind == "7"
    assert password_line("alice", "s3cret-Ü", base64.b64decode(salt), int(iterations)) == theirs
    assert password_line("alice", "other", base64.b64decode(salt), int(iterations)) != theirs


@pytest.mark.parametrize(("settings", "key", "words"), [
    ({"mode": "kerberos"}, "mqttlab:security.mode", "none, password, tls, mtls"),
    ({"mode": "tls", "tlsVersion": "tlsv1.0"}, "mqttlab:security.tlsVersion", "tlsv1.2, tlsv1.3"),
    ({"mode": "tls", "ciphers": "ALL; rm -rf /"}, "mqttlab:security.ciphers", "OpenSSL cipher list"),
    ({"mode": "tls", "tlsPort": 0}, "mqttlab:security.tlsPort", ">= 1"),
    ({"mode": "tls", "certDays": 0}, "mqttlab:security.certDays", ">= 1"),
    ({"mode": "tls", "cipher": "x"}, "mqttlab:security.cipher", "did you mean mqttlab:security.ciphers?"),
])
def test_bad_security_settings_name_the_key(settings: dict[str, object], key: str, words: str) -> None:
    cfg = load_stack("distributed", ROOT)
    with pytest.raises(ConfigError) as err:
        cfg.with_overrides({"security": settings})
    assert err.value.key == key and words in str(err.value)


def test_reference_default_is_anonymous_plaintext_and_unchanged() -> None:
    cfg = load_stack("distributed", ROOT)
    assert cfg.security.mode == "none"
    files = render_files(build_plan(cfg), cfg)
    assert "allow_anonymous true" in files["brokers/broker1/mosquitto.conf"] and "topic # both 2" in files["brokers/broker1/mosquitto.conf"]
    assert not [k for k in files if "security" in k or k.endswith(("passwd", "acl", ".key", ".crt"))]


def test_acl_and_certificates(tmp_path: Path) -> None:
    cfg = load_stack("distributed", ROOT).with_overrides({"security": {"mode": "mtls", "ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256"},
                                                           "scenario.topicLayout": "per-publisher"})
    plan = build_plan(cfg)
    files = render_files(plan, cfg, generate(plan, cfg.security))
    acl = files["brokers/broker2/acl"]
    assert "user bench-pub\ntopic write bench/test/+\n" in acl and "user bench-sub\ntopic read bench/test/+\n" in acl
    assert "user bridge-broker1-broker2\ntopic readwrite bench/test/+\n" in acl and "topic read $SYS/#" in acl
    assert "readwrite #" not in acl and "ciphers ECDHE-ECDSA-AES128-GCM-SHA256" in files["brokers/broker1/mosquitto.conf"]
    write_files(files, tmp_path)
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(tmp_path / "brokers/broker2/server.crt")],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:10.2.0.21" in text and "IP Address:10.3.0.10" in text and "IP Address:10.4.0.10" in text and "TLS Web Server" in text
    ok = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ipvs1/security/ca.crt"), str(tmp_path / "ipvs1/security/bench-pub.crt")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "ipvs1/security/bench-pub.key").stat().st_mode & 0o777 == 0o600
    sec = load_client(tmp_path / "ipvs1/security/client.json", "pub")
    assert sec.username == "bench-pub" and sec.cert == str(tmp_path / "ipvs1/security/bench-pub.crt") and sec.ssl_context().verify_mode.name == "CERT_REQUIRED"


def test_emqtt_bench_gets_the_matching_flags_and_printing_hides_the_password() -> None:
    sec = ClientSecurity(mode="mtls", username="bench-pub", password="pw-123", ca="/s/ca.crt", cert="/s/bench-pub.crt", key="/s/bench-pub.key")
    cmds = emqtt.commands(Scenario(), ["10.3.0.10:8883"], 10, 10, 100, security={"pub": sec, "sub": sec.with_(username="bench-sub")})
    pub = cmds["pub"]
    assert pub[pub.index("-u") + 1] == "bench-pub" and pub[pub.index("-P") + 1] == "pw-123" and "-S" in pub
    assert pub[pub.index("--certfile") + 1] == "/s/bench-pub.crt" and pub[pub.index("--keyfile") + 1] == "/s/bench-pub.key"
    assert "/s:/s:ro" in pub and pub[pub.index("-p") + 1] == "8883"
    assert "pw-123" not in " ".join(emqtt.redact(pub)) and "bench-sub" in cmds["sub"]
    plain = emqtt.commands(Scenario(), ["10.3.0.10:1883"], 1, 1, 1)
    assert "-u" not in plain["pub"] and "-S" not in plain["pub"]
