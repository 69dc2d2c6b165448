"""The schema of stack and campaign files: misspellings refused everywhere before anything exists,
the schema held to the parser (defaults, bounds), its JSON Schema and the generated docs."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pulumi
import pytest
import yaml

from tests.conftest import MQTTLAB, ROOT
from workloads.base.errors import UnknownKeyError
from workloads.campaign.spec import ALIASES, CampaignError, load_campaign
from workloads.describe import schema
from workloads.describe.config import ConfigError, load_stack, parse_config
from workloads.hosts.lab import netns

REFERENCE = yaml.safe_load((ROOT / "Pulumi.distributed.yaml").read_text())["config"]


def variant(edit: dict[str, Any] | None = None, section: str | None = None, **keys: Any) -> dict[str, Any]:
    """The reference stack's config with top-level keys added (``edit``) or keys put in a section."""
    cfg = copy.deepcopy(REFERENCE)
    if section:
        cfg.setdefault(section, {}).update(keys)
    cfg.update(edit or {})
    return cfg


# the misspellings a new user made, each of which used to run another experiment without a word
MISSPELT: list[tuple[dict[str, Any], str, str]] = [
    (variant(section="mqttlab:balancer", schedular="rr"), "mqttlab:balancer.schedular", "did you mean mqttlab:balancer.scheduler?"),
    (variant(section="mqttlab:brokers", cpu=1), "mqttlab:brokers.cpu", "did you mean mqttlab:brokers.cpus?"),
    (variant(section="mqttlab:bridge", keepalive=5), "mqttlab:bridge.keepalive", "did you mean mqttlab:bridge.keepaliveS?"),
    (variant({"mqttlab:scenrio": {"publishers": 4}}), "mqttlab:scenrio", "did you mean mqttlab:scenario?"),
    (variant({"mqttlab:topolgy": "centralized"}), "mqttlab:topolgy", "did you mean mqttlab:topology?"),
    (variant({"mqttlab:balancer.healthCheck": {"type": "mqtt"}}), "mqttlab:balancer.healthCheck",
     "write healthCheck: under mqttlab:balancer:"),
    (variant({"mqtlab:topology": "centralized"}), "mqtlab:topology", "the namespace mqtlab is not mqttlab; did you mean mqttlab:topology?"),
    (variant({"topology": "centralized"}), "topology", "namespace:name; did you mean mqttlab:topology?"),
    (variant(section="mqttlab:balancer", healthCheck={"tpye": "tcp"}), "mqttlab:balancer.healthCheck.tpye",
     "did you mean mqttlab:balancer.healthCheck.type?"),
    (variant(section="mqttlab:balancer", timeouts={"tcp": 900, "fin": 120}), "mqttlab:balancer.timeouts.fin",
     "did you mean mqttlab:balancer.timeouts.tcpfin?"),
    (variant(section="mqttlab:bridge", colour="blue"), "mqttlab:bridge.colour", "known in mqttlab:bridge: hub, keepaliveS, layout, qos"),
    (variant(section="mqttlab:network", vnetcidr="10.0.0.0/13"), "mqttlab:network.vnetcidr", "did you mean mqttlab:network.vnetCidr?"),
    (variant(section="mqttlab:scenario", publisher=4), "mqttlab:scenario.publisher", "did you mean mqttlab:scenario.publishers?"),
    (variant(section="mqttlab:security", tlsversion="tlsv1.3"), "mqttlab:security.tlsversion", "did you mean mqttlab:security.tlsVersion?"),
    (variant({"mqttlab:fault": ["broker2:kill@5s"]}), "mqttlab:fault", "did you mean mqttlab:faults?"),
    (variant({"mqttlab:azure": {"adminCidr": "203.0.113.7/32", "spott": True}}), "mqttlab:azure.spott", "did you mean mqttlab:azure.spot?"),
    (variant({"mqttlab:runid": "2"}), "mqttlab:runid", "did you mean mqttlab:runId?"),
]
IDS = [key for _c, key, _w in MISSPELT]


@pytest.mark.parametrize(("cfg", "key", "why"), MISSPELT, ids=IDS)
def test_each_misspelling_is_refused_naming_the_key_and_the_nearest(cfg: dict[str, Any], key: str, why: str) -> None:
    with pytest.raises(UnknownKeyError) as info:
        parse_config(cfg, "distributed")
    assert info.value.key == key
    assert why in str(info.value)
    assert "\n" not in str(info.value)


def misspell(name: str) -> str:
    """A typo: the second-last letter dropped (cpus -> cps, scheduler -> schedulr)."""
    return name[:-2] + name[-1]


def every_key() -> list[tuple[str, schema.Key]]:
    return [(path, k) for path, k in schema.walk() if "." in path]


@pytest.mark.parametrize(("path", "key"), every_key(), ids=[p for p, _k in every_key()])
def test_a_typo_in_any_key_of_any_section_is_refused_with_the_key_it_meant(path: str, key: schema.Key) -> None:
    *parents, name = path.split(".")
    cfg = copy.deepcopy(REFERENCE) | {"mqttlab:azure": {"adminCidr": "203.0.113.7/32"}}
    node = cfg.setdefault(f"mqttlab:{parents[0]}", {})
    for p in parents[1:]:
        node = node.setdefault(p, {})
    node[misspell(name)] = key.default if key.default is not None else 1
    with pytest.raises(UnknownKeyError) as info:
        parse_config(cfg, "distributed")
    assert info.value.key == f"mqttlab:{'.'.join(parents)}.{misspell(name)}"
    assert f"did you mean mqttlab:{path}?" in str(info.value)


@pytest.mark.parametrize("top", ["cofig", "secretprovider"])
def test_a_misspelt_top_level_key_of_the_stack_file_is_refused(tmp_path: Path, top: str) -> None:
    (tmp_path / "Pulumi.bad.yaml").write_text(yaml.safe_dump({top: REFERENCE}))
    with pytest.raises(UnknownKeyError, match=f"Pulumi.bad.yaml: {top} is not a known setting: did you mean"):
        load_stack("bad", tmp_path)


def test_other_providers_namespaces_pass() -> None:
    cfg = parse_config(variant({"azure-native:location": "westeurope", "azure-native:subscriptionId": "x", "command:x": 1}), "distributed")
    assert cfg.topology == "distributed"


# --------------------------------------------------------------------------- refused before anything exists


def write_stack(folder: Path, cfg: dict[str, Any], name: str = "bad") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    path = folder / f"Pulumi.{name}.yaml"
    path.write_text(yaml.safe_dump({"config": cfg}, sort_keys=False))
    return path


def mqttlab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MQTTLAB, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def namespaces() -> list[str]:
    return sorted(netns.list_namespaces())


@pytest.mark.parametrize(("cfg", "key", "why"), MISSPELT[:6], ids=IDS[:6])
def test_lab_run_and_render_refuse_a_misspelling_before_creating_anything(tmp_path: Path, cfg: dict[str, Any], key: str, why: str) -> None:
    project = tmp_path / "project"
    write_stack(project, cfg)
    before = namespaces()
    for args in (["lab", "run", "-s", "bad", "--out", str(tmp_path / "runs")], ["lab", "run", "-s", "bad", "--vm", "--out", str(tmp_path / "runs")],
                 ["render", "-s", "bad", "--out", str(tmp_path / "rendered")], ["config", "show", "-s", "bad"]):
        cp = mqttlab(*args, cwd=project)
        assert cp.returncode == 2, (args, cp.stderr)
        assert len(cp.stderr.strip().splitlines()) == 1 and cp.stderr.startswith("mqttlab: config "), cp.stderr
        assert key in cp.stderr and why in cp.stderr and "Traceback" not in cp.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "rendered").exists()
    assert set(namespaces()) <= set(before)  # none added (another lab of the machine may have ended meanwhile)


CAMPAIGN_MISSPELT = [
    ("set: {brokers.cpu: 1}", "set.brokers.cpu: unknown key 'brokers.cpu'; did you mean brokers.cpus?"),
    ("set: {cpu: 1}", "set.cpu: unknown key 'cpu'; did you mean cpus?"),
    ("factors: {balancer.schedular: [rr, lc]}", "factors.balancer.schedular: unknown key 'balancer.schedular'; did you mean balancer.scheduler?"),
    ("factors: {scenario.qs: [0, 1]}", "factors.scenario.qs: unknown key 'scenario.qs'; did you mean scenario.qos?"),
    ("factors: {publisher: [1, 2]}", "factors.publisher: unknown key 'publisher'; did you mean publishers?"),
    ("repetition: 3", "repetition: not a campaign key; did you mean repetitions?"),
    ("set: {balancer.healthCheck.intervl: 2}", "set.balancer.healthCheck.intervl: unknown key 'balancer.healthCheck.intervl'; "
                                              "did you mean balancer.healthCheck.interval?"),
]


@pytest.mark.parametrize(("line", "message"), CAMPAIGN_MISSPELT, ids=[m.split(":")[0] for _l, m in CAMPAIGN_MISSPELT])
def test_campaign_files_refuse_misspelt_keys_before_any_point(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"name: c\nstack: distributed\nprojectDir: {ROOT}\n{line}\n")
    with pytest.raises(CampaignError) as info:
        load_campaign(path, ROOT)
    assert str(info.value) == message
    cp = mqttlab("campaign", "run", str(path), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert cp.returncode == 2 and message in cp.stderr and "Traceback" not in cp.stderr, cp.stderr
    assert not (tmp_path / "out").exists()


def test_a_capacity_setting_misspelt_is_refused(tmp_path: Path) -> None:
    from workloads.campaign.capacity import settings

    path = tmp_path / "c.yaml"
    path.write_text(f"name: c\nstack: distributed\nprojectDir: {ROOT}\ncapacity: {{thresholdPc: 1}}\n")
    with pytest.raises(CampaignError, match=r"^capacity.thresholdPc: not a capacity setting; did you mean thresholdPct\?$"):
        settings(load_campaign(path, ROOT))


def test_campaign_keys_at_any_depth_reach_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"name: c\nstack: distributed\nprojectDir: {ROOT}\nfactors: {{balancer.healthCheck.type: [tcp, none]}}\n")
    camp = load_campaign(path, ROOT)
    assert [camp.validate_point(p.overrides, "x").balancer.health_check.type for p in camp.points()] == ["tcp", "none"]


AZURE = {"adminCidr": "203.0.113.7/32", "sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockKeyForTestsOnly user@host"}


@pytest.mark.parametrize(("extra", "key", "why"), [
    ({"mqttlab:balancer": {**REFERENCE["mqttlab:balancer"], "schedular": "rr"}}, "mqttlab:balancer.schedular", "did you mean mqttlab:balancer.scheduler?"),
    ({"mqttlab:scenrio": {"publishers": 4}}, "mqttlab:scenrio", "did you mean mqttlab:scenario?"),
    ({"mqttlab:azure": {**AZURE, "spott": True}}, "mqttlab:azure.spott", "did you mean mqttlab:azure.spot?"),
    ({"mqtlab:topology": "centralized"}, "mqtlab:topology", "did you mean mqttlab:topology?"),
    ({"mqttlab:balancer.healthCheck": {"type": "mqtt"}}, "mqttlab:balancer.healthCheck", "under mqttlab:balancer:"),
    ({"mqttlab:runid": "2"}, "mqttlab:runid", "did you mean mqttlab:runId?"),
])
def test_the_azure_program_refuses_a_misspelling_before_any_resource(monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], key: str,
                                                                     why: str) -> None:
    from tests.test_azure import record_registrations, run, stack_config

    seen = record_registrations(monkeypatch)
    with pytest.raises(pulumi.RunError) as info:
        run("distributed", monkeypatch, stack_config("distributed", azure=AZURE, extra=extra))
    assert [t for t in seen if t != "pulumi:pulumi:Stack"] == []
    assert key in str(info.value) and why in str(info.value) and "configuration error" in str(info.value)


# --------------------------------------------------------------------------- the schema is the parser's


def test_every_default_in_the_schema_is_what_the_parser_fills_in() -> None:
    shown = schema.effective(parse_config({}, "somestack"))
    checked = 0
    for path, key in schema.walk():
        if key.keys or not key.attr or key.default is None:
            continue
        node: Any = shown
        section, *rest = path.split(".")
        node = node[f"mqttlab:{section}"]
        for part in rest:
            node = node[part]
        assert node == key.default, path
        checked += 1
    assert checked >= 50


# keys another key of the reference stack holds back from a bound (the schema gives the widest range):
# there only the refusal beyond the bound is checked here; the cross-checks have their own tests
MOVED_BY_ANOTHER = {
    "scenario.messages", "scenario.timeLimitS", "scenario.reconnectMaxMs", "bridge.hub",  # >= publishers, > drainS, >= min, <= count
    "balancer.healthCheck.timeout", "balancer.healthCheck.interval",  # timeout <= interval
    "brokers.count",  # the reference lists three addresses
    "bridge.qos",  # >= the scenario's qos
    "scenario.publishers",  # <= messages when they are a total
    "scenario.reconnectMinMs",  # <= reconnectMaxMs
    # the distributed topology has no client-to-balancer link; jitter is at most the delay
    *(f"links.clientBalancer.{k}" for k in ("delayMs", "jitterMs", "lossPct", "rateMbit")),
    *(f"links.{c}.jitterMs" for c in ("balancerBroker", "bridge")),
}


def bounded() -> list[tuple[str, schema.Key]]:
    return [(p, k) for p, k in every_key() if k.type in ("integer", "number") and k.attr and (k.minimum is not None or k.maximum is not None)]


@pytest.mark.parametrize(("path", "key"), bounded(), ids=[p for p, _k in bounded()])
def test_every_bound_in_the_schema_is_the_parsers(path: str, key: schema.Key) -> None:
    def with_value(v: Any) -> dict[str, Any]:
        cfg = copy.deepcopy(REFERENCE)
        section, *rest = path.split(".")
        node = cfg.setdefault(f"mqttlab:{section}", {})
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = v
        return cfg

    step = 1 if key.type == "integer" else 0.001
    for bound, outside in ((key.minimum, -step), (key.maximum, step)):
        if bound is None:
            continue
        at = bound + (step if key.exclusive_minimum and outside < 0 else 0)
        beyond = bound + outside if not (key.exclusive_minimum and outside < 0) else bound
        value = int(beyond) if key.type == "integer" else beyond
        with pytest.raises(ConfigError) as info:
            parse_config(with_value(value), "distributed")
        assert info.value.key == f"mqttlab:{path}", (path, value)
        if path not in MOVED_BY_ANOTHER:
            parse_config(with_value(int(at) if key.type == "integer" else at), "distributed")


# --------------------------------------------------------------------------- JSON Schema, docs, config show


def stack_docs() -> list[Path]:
    return sorted(ROOT.glob("Pulumi.*.yaml"))


def test_the_json_schema_accepts_every_stack_and_campaign_file_here_and_refuses_the_misspellings() -> None:
    stack = schema.stack_json_schema()
    jsonschema.Draft202012Validator.check_schema(stack)
    checker = jsonschema.Draft202012Validator(stack, format_checker=jsonschema.FormatChecker())
    for path in stack_docs():
        checker.validate(yaml.safe_load(path.read_text()))
    for cfg, key, _why in MISSPELT:
        if key.startswith("mqttlab:") or key == "topology":
            errors = list(checker.iter_errors({"config": cfg}))
            assert errors, key
    camp = schema.campaign_json_schema(ALIASES)
    jsonschema.Draft202012Validator.check_schema(camp)
    cchecker = jsonschema.Draft202012Validator(camp)
    campaigns = sorted((ROOT / "campaigns").glob("*.yaml"))
    assert campaigns
    for path in campaigns:
        cchecker.validate(yaml.safe_load(path.read_text()))
    for line, _message in CAMPAIGN_MISSPELT:
        assert list(cchecker.iter_errors(yaml.safe_load(f"stack: distributed\n{line}\n"))), line


def test_mqttlab_schema_prints_both_json_schemas(tmp_path: Path) -> None:
    for args, title in ((["schema"], "mqttlab stack file"), (["schema", "--campaign"], "mqttlab campaign file")):
        cp = mqttlab(*args, cwd=tmp_path)
        assert cp.returncode == 0, cp.stderr
        assert json.loads(cp.stdout)["title"].startswith(title)


def test_the_generated_docs_are_the_schemas() -> None:
    for (name, marker), body in schema.generated_blocks(ALIASES).items():
        text = (ROOT / name).read_text()
        assert schema.block(text, marker) == body.strip(), f"{name} {marker}: run python scripts/docs.py"


def test_config_show_prints_what_runs_and_reads_back_as_the_same_experiment(tmp_path: Path) -> None:
    cp = mqttlab("config", "show", "-s", "distributed", "--set", "balancer.scheduler=rr", "--set", "balancer.healthCheck.type=tcp",
                 "--publishers", "10", "--project-dir", str(ROOT), cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    shown = yaml.safe_load(cp.stdout)["config"]
    assert shown["mqttlab:balancer"]["scheduler"] == "rr" and shown["mqttlab:balancer"]["healthCheck"]["type"] == "tcp"
    assert shown["mqttlab:scenario"]["publishers"] == 10 and shown["mqttlab:scenario"]["subscribers"] == 240
    assert shown["mqttlab:brokers"]["cpus"] == 0.25 and shown["mqttlab:bridge"]["keepaliveS"] == 60  # defaults filled in
    write_stack(tmp_path / "again", shown, "distributed")
    again = load_stack("distributed", tmp_path / "again")
    want = load_stack("distributed", ROOT).with_overrides({"balancer.scheduler": "rr", "balancer.healthCheck.type": "tcp",
                                                          "scenario.publishers": 10})
    assert again == want
    as_json = json.loads(mqttlab("config", "show", "-s", "distributed", "--json", "--project-dir", str(ROOT), cwd=tmp_path).stdout)
    assert as_json["config"]["mqttlab:scenario"]["messages"] == 6000


def test_config_show_refuses_a_misspelt_override(tmp_path: Path) -> None:
    cp = mqttlab("config", "show", "-s", "distributed", "--set", "brokers.cpu=1", "--project-dir", str(ROOT), cwd=tmp_path)
    assert cp.returncode == 2 and "did you mean brokers.cpus?" in cp.stderr and "Traceback" not in cp.stderr


def test_every_azure_setting_the_program_reads_is_in_the_schema() -> None:
    """The Azure section is parsed in infra/settings.py, beside the schema: a key read there but
    missing here would be refused as unknown, one listed here but never read would be accepted
    and ignored."""
    import re

    source = (ROOT / "infra" / "settings.py").read_text()
    read = set(re.findall(r'sec\.get\("(\w+)"', source)) | set(re.findall(r'\("(\w+VmSize)", "Standard_', source))
    assert read == {k.name for k in schema.AZURE.keys}
