"""The stand-in for IPVS on kernels without it, and the stack keys for the reference's settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, Cluster
from workloads.base.errors import LabError
from workloads.describe import standin
from workloads.describe.config import ConfigError, load_stack
from workloads.describe.plan import build_plan
from workloads.hosts.lab import lab, netns
from workloads.render.balancer import haproxy_cfg, nft_balancer
from workloads.render.files import render_files


@pytest.mark.parametrize("scheduler", ["rr", "wrr", "lc", "wlc", "sh", "mh"])
def test_the_default_stand_in_is_the_kernel_nat_for_every_scheduler(scheduler: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab, "kernel_has_ipvs", lambda: False)
    balancer, note = lab.choose_balancer(None, scheduler)
    assert balancer == "nftables"
    assert note.startswith(f"no IPVS in this kernel: nftables kernel NAT stands in for IPVS {scheduler}")
    rec = standin.stood_in(balancer, scheduler)
    assert rec["kind"] == "kernel NAT" and rec["exact"] is (scheduler in ("rr", "wrr", "sh"))
    if scheduler in ("lc", "wlc"):
        assert "nftables has no least-connection scheduler" in note and "round robin" in rec["scheduler"]
    with pytest.raises(LabError, match="--vm"):
        lab.choose_balancer("ipvs", scheduler)


def test_haproxy_is_used_only_when_asked_and_says_it_is_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab, "kernel_has_ipvs", lambda: False)
    balancer, note = lab.choose_balancer("haproxy", "lc")
    assert balancer == "haproxy" and "TCP proxy, leastconn" in note and "brokers see the balancer as the client" in note
    assert standin.stood_in("haproxy", "lc") == {"for": "ipvs lc", "by": "haproxy", "kind": "TCP proxy", "scheduler": "leastconn", "exact": False}
    monkeypatch.setattr(lab, "kernel_has_ipvs", lambda: True)
    assert lab.choose_balancer(None, "lc") == ("ipvs", "")


# what each balancer really runs for each IPVS scheduler asked for
RAN = {"ipvs": {s: s for s in ("rr", "wrr", "lc", "wlc", "sh", "mh")},
       "nftables": {"rr": "rr", "wrr": "wrr", "lc": "rr", "wlc": "wrr", "sh": "sh", "mh": "sh"},
       "haproxy": {"rr": "roundrobin", "wrr": "roundrobin", "lc": "leastconn", "wlc": "leastconn", "sh": "source", "mh": "source"}}


@pytest.mark.parametrize("balancer, scheduler", [(b, s) for b, row in RAN.items() for s in row])
def test_every_balancer_and_scheduler_is_named_for_what_ran_and_what_it_stands_in_for(balancer: str, scheduler: str) -> None:
    b = standin.balancing(balancer, scheduler)
    ran = RAN[balancer][scheduler]
    assert (b.balancer, b.scheduler, b.requested_balancer, b.requested_scheduler) == (balancer, ran, "ipvs", scheduler)
    assert b.label == f"{balancer}-{ran}" and b.requested_label == f"ipvs-{scheduler}"
    if balancer == "ipvs":
        assert not b.stood_in and b.stands_in_for == "" and b.text == b.slug == f"ipvs-{scheduler}" and b.exact
    else:
        assert b.stood_in and b.stands_in_for == f"ipvs-{scheduler}"
        assert b.text == f"{balancer}-{ran} standing in for ipvs-{scheduler}" and b.slug == f"{balancer}-{ran}-for-ipvs-{scheduler}"
        assert b.exact is (balancer == "nftables" and ran == scheduler)
    assert b.record() == standin.stood_in(balancer, scheduler) and b.record()["by"] == balancer
    fields = b.manifest_fields()
    assert (fields["balancer"], fields["scheduler"], fields["requested_scheduler"], fields["balancing"]) == (balancer, ran, scheduler, b.text)
    assert standin.from_manifest(fields) == b


def test_the_lc_stand_in_is_named_nftables_rr_standing_in_for_ipvs_lc() -> None:
    assert standin.balancing("nftables", "lc").text == "nftables-rr standing in for ipvs-lc"
    assert standin.balancing("ipvs", "lc").text == "ipvs-lc"


@pytest.mark.parametrize("balancer, scheduler, what", [("lvs", "rr", "balancer 'lvs'"), ("nftables", "xx", "scheduler 'xx'"),
                                                      ("ipvs", "xx", "scheduler 'xx'")])
def test_an_unknown_balancer_or_scheduler_is_named(balancer: str, scheduler: str, what: str) -> None:
    with pytest.raises(ValueError, match=f"^{what}: choose one of"):
        standin.balancing(balancer, scheduler)


@pytest.mark.parametrize("manifest, text", [
    # before the requested fields: scheduler is the one asked for, stood_in says who carried it out
    ({"balancer": "nftables", "scheduler": "lc", "stood_in": {"for": "ipvs lc", "by": "nftables", "kind": "kernel NAT",
                                                              "scheduler": "round robin (numgen inc)", "exact": False}},
     "nftables-rr standing in for ipvs-lc"),
    ({"balancer": "haproxy", "scheduler": "wlc", "stood_in": {"for": "ipvs wlc", "by": "haproxy"}}, "haproxy-leastconn standing in for ipvs-wlc"),
    ({"balancer": "haproxy", "scheduler": "sh"}, "haproxy-source standing in for ipvs-sh"),  # before stood_in too
    ({"balancer": "ipvs", "scheduler": "lc"}, "ipvs-lc"),
])
def test_older_manifests_say_what_ran_from_what_they_recorded(manifest: dict[str, object], text: str) -> None:
    b = standin.from_manifest(manifest)
    assert b is not None and b.text == text


def test_a_bench_without_a_balancer_has_no_balancing() -> None:
    assert standin.from_manifest({"kind": "bench"}) is None


@pytest.mark.parametrize("scheduler, algo", [("lc", "leastconn"), ("wrr", "roundrobin"), ("mh", "source")])
def test_haproxy_config_balances_by_the_scheduler_the_label_names(scheduler: str, algo: str) -> None:
    cfg = load_stack("distributed", ROOT).with_overrides({"balancer.scheduler": scheduler})
    text = haproxy_cfg(build_plan(cfg).balancers[0])
    assert f"\tbalance {algo}\n" in text and algo == standin.balancing("haproxy", scheduler).scheduler


@pytest.mark.parametrize("scheduler, weights, pick", [("sh", [2, 1, 1], "jhash ip saddr mod 4"), ("wlc", [3, 1, 1], "numgen inc mod 5"),
                                                       ("rr", [1, 1, 1], "numgen inc mod 3"), ("lc", [1, 1, 1], "numgen inc mod 3"),
                                                       ("mh", [1, 1, 1], "jhash ip saddr mod 3")])
def test_nft_balancer_rules_pass_nft_for_each_scheduler(scheduler: str, weights: list[int], pick: str, make_ns: Callable[[str], str],
                                                         tmp_path: Path) -> None:
    cfg = load_stack("centralized", ROOT).with_overrides({"balancer.scheduler": scheduler, "balancer.weights": weights})
    text = nft_balancer(build_plan(cfg).balancers[0])
    assert text.count(f"dnat to {pick} map") == 2
    f = tmp_path / "lb.nft"
    f.write_text(text)
    ns = make_ns("nftlb")
    cp = netns.run(["nft", "-c", "-f", str(f)], ns=ns, check=False)
    assert cp.returncode == 0, cp.stderr


@pytest.mark.parametrize("value, key", [(["error"], "mqttlab:brokers.logTypes"), (["all", "loud"], "mqttlab:brokers.logTypes[1]"),
                                        ("all", "mqttlab:brokers.logTypes")])
def test_bad_log_types_name_the_key(value: object, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_stack("distributed", ROOT).with_overrides({"brokers.logTypes": value})
    assert exc.value.key == key


def test_log_types_default_and_reference_render(tmp_path: Path) -> None:
    cfg = load_stack("distributed", ROOT)
    conf = render_files(build_plan(cfg), cfg)["brokers/broker1/mosquitto.conf"]
    assert "log_type notice" in conf and "log_type all" not in conf and "log_type debug" not in conf
    ref = cfg.with_overrides({"brokers.logTypes": ["all"]})
    lines = [x for x in render_files(build_plan(ref), ref)["brokers/broker1/mosquitto.conf"].splitlines() if x.startswith("log_type")]
    assert lines == ["log_type all"]


def test_reference_log_types_make_the_real_broker_log_every_publish(cluster: Callable[..., Cluster]) -> None:
    logs = {}
    for name, over in (("reference", {"brokers.logTypes": ["all"]}), ("default", {})):
        cl = cluster("distributed", over | {"bridge.layout": "none"})
        for k in range(3):
            cp = cl.ns_run(["mosquitto_pub", "-h", cl.addr(1), "-t", "t", "-q", "1", "-m", f"m{k}"])
            assert cp.returncode == 0, cp.stderr
        for p in cl.procs:
            netns.stop(p)  # mosquitto's stdout to a file is block-buffered: read it once it exited
        logs[name] = (cl.files / "broker2.log").read_text()
    assert logs["reference"].count("Received PUBLISH") == 3
    assert logs["default"].count("New client connected") == 3 and "Received PUBLISH" not in logs["default"]
