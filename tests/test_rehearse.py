"""The rehearsal of ``pulumi up``: the program's own remote steps, found under the mocks, and the
update semantics the engine and pulumi-command give them (which steps run again, what a failure
stops), carried out by a recording runner. The real run over SSH is in test_rehearse_real.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from infra.rehearse.engine import FAILED, NOT_RUN, RAN, UNCHANGED, Outcome, State, up
from infra.rehearse.program import COMMAND, COPY, MARK_BASE, RemoteStep, rehearsed

START = "1900000000.500"


class Recorder:
    """Answers every step with exit 0 (``bench-start`` with an epoch), except those named in ``fail``."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail or set()
        self.lock = threading.Lock()

    def run(self, step: RemoteStep, inputs: Mapping[str, Any]) -> Outcome:
        with self.lock:
            self.calls.append((step.name, dict(inputs)))
        if step.name in self.fail:
            return Outcome(1, "", f"{step.name} failed on purpose")
        return Outcome(0, f"{START}\n" if " host bench-start " in step.create else f"{step.name} done\n", "")

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.calls]


@pytest.fixture(scope="module", params=["smoke", "distributed"])
def program(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    memory: dict[str, Any] = {}
    rehearsed(request.param, memory)
    return request.param, memory


def test_every_remote_step_the_program_registers_is_rehearsed_after_what_it_waits_for(program: tuple[str, dict[str, Any]]) -> None:
    stack, memory = program
    r = rehearsed(stack, memory)
    registered = {res.name for res in r.program.resources if res.type in (COMMAND, COPY)}
    assert {s.name for s in r.steps} == registered and len(r.steps) == len(registered) >= 20
    seen: set[str] = set()
    for s in r.steps:
        assert set(s.after) <= seen, f"{s.name} comes before {set(s.after) - seen}"
        seen.add(s.name)
    pos = {s.name: i for i, s in enumerate(r.steps)}
    chain = ["brokers-cloud-init", "brokers-bundle", "brokers-install", "brokers-brokers-up", "bench-start", "bench-verdict"]
    assert [pos[n] for n in chain] == sorted(pos[n] for n in chain)
    by = {s.name: s for s in r.steps}
    assert "brokers-brokers-up" in by["bench-probe-ipvs1"].after  # the probe waits for the brokers and every director
    # each step dials its VM with the key its cloud-init installs: real Ed25519 keys, one per VM
    for s in r.steps:
        load_ssh_public_key(s.host_key.encode())
        assert s.host_key.split()[1] in r.user_data[s.vm] or _private_matches(r.user_data[s.vm], s.host_key)
        assert s.inputs["connection"]["host"] == r.addresses[s.vm] and s.user == "mqttlab"
    assert len({s.host_key for s in r.steps}) == len(r.addresses)
    # the copy is the program's bundle, a real file
    assert all(Path(s.source or "").is_file() for s in r.steps if s.kind == "copy")
    # destroy runs no remote step: none has a delete command
    assert not [s.name for s in r.steps if s.inputs.get("delete")]


def _private_matches(user_data: str, public: str) -> bool:
    import yaml
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_ssh_private_key

    doc = yaml.safe_load(user_data)
    key = load_ssh_private_key(doc["ssh_keys"]["ed25519_private"].encode(), None)
    return key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() == " ".join(public.split()[:2])


def test_updates_run_what_changed_and_hand_on_the_agreed_start(tmp_path: Path) -> None:
    memory: dict[str, Any] = {}
    state = State(tmp_path / "state.json")
    r = rehearsed("smoke", memory)
    rec = Recorder()
    first = up(r.steps, rec, state, r.marks)
    assert {x.status for x in first} == {RAN} and len(rec.calls) == len(r.steps)
    order = rec.names
    for s in r.steps:  # started only after what it waits for
        assert all(order.index(a) < order.index(s.name) for a in s.after)
    pubs = [inputs["create"] for name, inputs in rec.calls if name.startswith("bench-pubs-")]
    assert pubs and all(c.endswith(f"--start-at {START}") for c in pubs)  # what bench-start printed, not the marker
    assert not any(str(MARK_BASE)[:6] in json.dumps(inputs, default=str) for _, inputs in rec.calls)

    again = Recorder()
    second = up(rehearsed("smoke", memory).steps, again, State.load(tmp_path / "state.json"), r.marks)
    assert again.calls == [] and {x.status for x in second} == {UNCHANGED}

    new_run = rehearsed("smoke", memory, run_id="2")
    rec3 = Recorder()
    third = up(new_run.steps, rec3, State.load(tmp_path / "state.json"), new_run.marks)
    ran = {x.name for x in third if x.status == RAN}
    assert ran == {s.name for s in new_run.steps if s.component == "bench"}  # the benchmark only
    assert {x.status for x in third if x.name not in ran} == {UNCHANGED}
    assert all("--run-id 2 " in inputs["create"] for _, inputs in rec3.calls if "--run-id" in inputs["create"])


def test_a_failed_step_stops_the_update_and_runs_again_next_time(tmp_path: Path) -> None:
    memory: dict[str, Any] = {}
    r = rehearsed("smoke", memory)
    state = State(tmp_path / "state.json")
    results = {x.name: x for x in up(r.steps, Recorder(fail={"brokers-brokers-up"}), state, r.marks)}
    assert results["brokers-brokers-up"].status == FAILED and results["brokers-brokers-up"].tail == ["brokers-brokers-up failed on purpose"]
    assert results["bench-probe-ipvs1"].status == NOT_RUN and "brokers-brokers-up" in results["bench-probe-ipvs1"].why
    assert all(x.status == NOT_RUN for x in results.values() if x.name.startswith("bench-"))
    assert "brokers-brokers-up" not in State.load(tmp_path / "state.json").steps  # not recorded: it runs again
    rec = Recorder()
    after = {x.name: x for x in up(r.steps, rec, State.load(tmp_path / "state.json"), r.marks)}
    assert after["brokers-brokers-up"].status == RAN and after["brokers-install"].status == UNCHANGED
    assert rec.names[0] in ("brokers-brokers-up", "ipvs1-balancer-apply", "ipvs2-balancer-apply") or rec.names[0].startswith("bench-")
    assert {x.status for x in after.values()} <= {RAN, UNCHANGED}


def test_continue_on_error_stops_only_what_waits_for_the_failure(tmp_path: Path) -> None:
    r = rehearsed("smoke", {})
    stopped = {x.name: x.status for x in up(r.steps, Recorder(fail={"ipvs1-cloud-init"}), State(tmp_path / "a.json"), r.marks)}
    going = {x.name: x.status for x in up(r.steps, Recorder(fail={"ipvs1-cloud-init"}), State(tmp_path / "b.json"), r.marks,
                                           continue_on_error=True)}
    assert stopped["ipvs1-bundle"] == going["ipvs1-bundle"] == NOT_RUN
    assert going["brokers-brokers-up"] == RAN and going["ipvs2-install"] == RAN and going["bench-probe-ipvs2"] == NOT_RUN
    assert stopped["brokers-brokers-up"] == NOT_RUN  # without it, nothing new starts after the failure



def test_a_failed_runcmd_command_fails_cloud_init_instead_of_reporting_done(tmp_path: Path) -> None:
    """Found by the rehearsal: cloud-init runs ``runcmd`` as one script (cloud-init's own
    ``util.shellify``, run by the real sh here) and judges it by its exit status; a failed
    ``systemctl enable --now docker`` used to be followed by commands that succeeded, so the VM
    was reported done without Docker and only brokers-up failed, with a Compose traceback."""
    import shutil
    import subprocess

    import yaml

    if not Path("/usr/lib/python3/dist-packages/cloudinit").is_dir() or not shutil.which("sh"):
        pytest.skip("cloud-init is not installed (scripts/setup.sh --dev installs it)")
    r = rehearsed("smoke", {})
    runcmd = yaml.safe_load(r.user_data["brokers"])["runcmd"]
    docker = ["systemctl", "enable", "--now", "docker"]
    assert docker in runcmd
    marker = tmp_path / "after"
    cmds = [["false"] if c == docker else ["touch", str(marker)] if isinstance(c, list) and c[0] == "chown" else
            ["true"] if isinstance(c, list) else c for c in runcmd]
    script = subprocess.run(["/usr/bin/python3", "-c", "import json, sys; from cloudinit import util; print(util.shellify(json.load(sys.stdin)))"],
                            input=json.dumps(cmds), capture_output=True, text=True, check=True).stdout
    (tmp_path / "runcmd").write_text(script)
    done = subprocess.run(["sh", str(tmp_path / "runcmd")], capture_output=True, text=True)
    assert done.returncode != 0 and not marker.exists()


def test_a_misspelt_stack_is_one_line_before_anything_is_made() -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    cp = subprocess.run([str(Path(sys.executable).parent / "mqttlab"), "rehearse", "-s", "smok"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
    assert cp.returncode == 2 and cp.stderr.count("\n") == 1 and "did you mean smoke?" in cp.stderr, cp.stderr
    assert not (ROOT / ".rehearsal" / "smok").exists()
    bad = subprocess.run([str(Path(sys.executable).parent / "mqttlab"), "rehearse", "-s", "smoke", "--run-id", "BAD_ID", "--dir", "/nonexistent/x"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "mqttlab:runId='BAD_ID'" in bad.stderr, bad.stderr
    outside = subprocess.run([str(Path(sys.executable).parent / "mqttlab"), "rehearse", "-s", "smoke"], cwd="/", capture_output=True, text=True,
                             timeout=120)
    assert outside.returncode == 2 and "inside the project's checkout" in outside.stderr


def test_a_set_key_reaches_the_hosts_through_the_bundle_and_a_misspelt_one_is_refused_first(tmp_path: Path) -> None:
    import subprocess
    import sys
    import tarfile

    import yaml

    from infra.rehearse.__main__ import plan_of
    from tests.conftest import ROOT

    r = rehearsed("distributed", {}, overrides={"scenario.publishers": 7, "balancer.scheduler": "rr"})
    bundle = next(s for s in r.steps if s.kind == "copy" and s.vm == "ipvs1")
    assert bundle.source is not None
    with tarfile.open(bundle.source) as tar:
        member = tar.extractfile("Pulumi.distributed.yaml")
        assert member is not None
        doc = yaml.safe_load(member.read())["config"]
    assert doc["mqttlab:scenario"]["publishers"] == 7 and doc["mqttlab:balancer"]["scheduler"] == "rr"
    assert doc["mqttlab:scenario"]["subscribers"] == 240  # what was not set stays the stack file's
    assert plan_of("distributed", overrides={"brokers.cpus": 0.5}).broker_cpus == 0.5 != plan_of("distributed").broker_cpus
    rehearse = [str(Path(sys.executable).parent / "mqttlab"), "rehearse", "-s", "distributed", "--dir", str(tmp_path / "d")]
    cp = subprocess.run([*rehearse, "--set", "scenario.publisher=6"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cp.returncode == 2 and cp.stderr.count("\n") == 1 and "did you mean scenario.publishers?" in cp.stderr, cp.stderr
    assert not (tmp_path / "d").exists()


def test_the_store_stand_in_grants_what_the_programs_role_assignments_grant_and_nothing_else(program: tuple[str, dict[str, Any]]) -> None:
    """The gate's roles come from the program: every VM's identity may write, the operator may
    read, no other principal appears; account, container and URL are the program's outputs."""
    from infra.components import BLOB_DATA_CONTRIBUTOR, BLOB_DATA_READER
    from infra.rehearse.store import spec

    stack, memory = program
    r = rehearsed(stack, memory)
    s = spec(r)
    vms = r.program.of("azure-native:compute:VirtualMachine")
    assert set(s.principals) == {v.name.removesuffix("-vm") for v in vms}
    assert s.roles == {**{p: "contributor" for p in s.principals.values()}, s.operator: "reader"}
    assert s.url == r.program.outputs["resultsUrl"] == f"https://{s.host}/{s.container}"
    assert s.prefix == r.program.outputs["resultsPrefix"]
    by_role = {str(ra.inputs["roleDefinitionId"]).rsplit("/", 1)[-1] for ra in r.program.of("azure-native:authorization:RoleAssignment")}
    assert by_role == {BLOB_DATA_CONTRIBUTOR, BLOB_DATA_READER}


def test_the_docker_unit_stand_in_starts_dockerd_in_a_clean_environment_as_systemd_would(tmp_path: Path) -> None:
    """Found by the rehearsal: dockerd started with the SSH session's environment kept
    ``XDG_RUNTIME_DIR=/run/user/0``, which does not exist without logind, so runc failed every
    ``docker exec`` and brokers-up reported that broker1 did not answer."""
    import os
    import subprocess

    from infra.rehearse.standins import systemctl

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    # docker: `info` fails until "dockerd" has run; the image is already there
    (bin_ / "docker").write_text(f'#!/bin/sh\n[ "$1" = info ] && exec test -e {tmp_path}/env\nexit 0\n')
    # nohup: run what it is given, with dockerd replaced by env(1) to record dockerd's environment
    (bin_ / "nohup").write_text(f'#!/bin/sh\nlast=$(eval echo \\${{$#}})\n[ "$last" = dockerd ] || exit 9\n'
                                f'n=$#; set -- $(for a in "$@"; do n=$((n-1)); [ $n -eq 0 ] || echo "$a"; done) env\n'
                                f'"$@" > {tmp_path}/env.tmp; mv {tmp_path}/env.tmp {tmp_path}/env\n')
    for f in ("docker", "nohup"):
        (bin_ / f).chmod(0o755)
    (tmp_path / "systemctl").write_text(systemctl("mqttlab/mosquitto:rehearsal", log=str(tmp_path / "dockerd.log")))
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "XDG_RUNTIME_DIR": "/run/user/0", "TMPDIR": "/nonexistent"}
    cp = subprocess.run(["sh", str(tmp_path / "systemctl"), "enable", "--now", "docker"], env=env, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    seen = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines())
    assert "XDG_RUNTIME_DIR" not in seen and "TMPDIR" not in seen and seen["PATH"].startswith("/usr/local/sbin")
    other = subprocess.run(["sh", str(tmp_path / "systemctl"), "start", "ssh"], env=env, capture_output=True, text=True, timeout=60)
    assert other.returncode == 1 and "not stood in" in other.stderr


class Slow(Recorder):
    """Takes ``seconds`` over ``slow``, as a step that waits quietly (a broker probe) does."""

    def __init__(self, slow: str, seconds: float) -> None:
        super().__init__()
        self.slow, self.seconds = slow, seconds

    def run(self, step: RemoteStep, inputs: Mapping[str, Any]) -> Outcome:
        if step.name == self.slow:
            import time

            time.sleep(self.seconds)
        return super().run(step, inputs)


def test_a_step_that_runs_long_is_shown_still_running_with_its_host_and_time(tmp_path: Path) -> None:
    """Found by the rehearsal: brokers-up waited quietly past the micro-VM's minute without a sign of
    life, and the run was stopped as hung before the step could end and say why."""
    r = rehearsed("smoke", {})
    seen: list[list[tuple[str, str, float]]] = []
    results = up(r.steps, Slow("brokers-brokers-up", 0.5), State(tmp_path / "s.json"), r.marks, running=seen.append, every_s=0.1)
    assert {x.status for x in results} == {RAN}
    shown = [entry for now in seen for entry in now if entry[0] == "brokers-brokers-up"]
    assert len(shown) >= 3 and {h for _, h, _ in shown} == {"brokers"}
    assert [t for *_, t in shown] == sorted(t for *_, t in shown) and shown[-1][2] >= 0.3
    assert not [now for now in seen if any(n != "brokers-brokers-up" for n, _, _ in now)]  # only what was still running


def test_what_a_step_said_before_its_bound_is_kept_in_its_output_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step stopped at the runner's bound (or a run stopped while it runs) leaves what it said."""
    import os

    from infra.rehearse.ssh import SshRunner

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "ip").write_text("#!/bin/sh\necho waiting for broker1\necho 'no answer yet' >&2\nexec sleep 30\n")  # ip netns exec ctl ssh ...
    (bin_ / "ip").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    r = rehearsed("smoke", {})
    step = next(s for s in r.steps if s.name == "brokers-brokers-up")
    runner = SshRunner(tmp_path / "ssh", r.operator_key, timeout_s=1.0, outdir=tmp_path / "steps")
    out = runner.run(step, step.inputs)
    assert out.rc == 124 and out.stdout == "waiting for broker1\n" and "no answer yet" in out.stderr and "no end within 1s" in out.stderr
    assert (tmp_path / "steps" / "brokers-brokers-up.out").read_text() == "waiting for broker1\n"


def test_the_guest_can_write_the_programs_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the rehearsal: a source changed while the micro-VM booted, the program (run again
    in the guest for the update) wrote its new bundle, and the guest's read-only root refused it."""
    from infra.bundle import BUNDLE_DIR
    from infra.mocked import ROOT
    from infra.rehearse import __main__ as rehearse_main
    from workloads.hosts.lab import vm

    seen: dict[str, Any] = {}

    def fake_run(script: str, rwdirs: list[Path], **kw: Any) -> Any:
        import subprocess

        seen["rwdirs"] = rwdirs
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(vm, "run_in_vm", fake_run)
    assert rehearse_main.in_vm(["-s", "smoke"], tmp_path) == 0
    assert ROOT / BUNDLE_DIR in seen["rwdirs"] and tmp_path in seen["rwdirs"]


def test_a_failure_case_acts_on_each_vm_over_that_vms_own_connection(tmp_path: Path) -> None:
    """Found by the rehearsal: the first action on the broker VM raised KeyError, since the
    runner looked for steps by their resource type instead of their kind and found none."""
    from infra.rehearse.__main__ import plan_of
    from infra.rehearse.failures import Hooked, cases

    r = rehearsed("smoke", {})
    rec = Recorder()
    hooked = Hooked(rec, r.steps, {}, lambda _t: None)
    for case in cases(plan_of("smoke")):
        for vm, command in (*case.before, *case.undo, *(a for acts in case.after_step.values() for a in acts)):
            assert hooked.act(vm, command).rc == 0
    assert {n for n, _ in rec.calls} == {"rehearsal-action-brokers", "rehearsal-action-ipvs1", "rehearsal-action-ipvs2"}
    for name, inputs in rec.calls:
        vm = name.removeprefix("rehearsal-action-")
        assert inputs["connection"]["host"] == r.addresses[vm] and inputs["environment"] == {}


def test_the_operator_fetches_the_last_updates_results_prefix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by the rehearsal: after an update with a new runId it fetched the first runId's
    results, since it took the prefix from the store made with the hosts, not from the update."""
    from infra.rehearse.__main__ import Log, one_update

    memory: dict[str, Any] = {}
    log = Log(tmp_path / "log.jsonl")
    state = State(tmp_path / "state.json")
    first = one_update("up", "smoke", memory, None, state, Recorder(), log)
    second = one_update("up runId=7", "smoke", memory, "7", state, Recorder(), log)
    assert first[0] and second[0]
    assert first[2] == rehearsed("smoke", memory).program.outputs["resultsPrefix"] and second[2] == "smoke/7/" != first[2]


def test_the_registry_proxy_looks_names_up_one_at_a_time_remembers_them_and_asks_again_on_try_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """qemu's user-mode DNS forwarder fails parallel lookups with EAI_AGAIN (every request of the
    hosts' first apt-get update got a 502): the proxy asks for IPv4 only, one name at a time,
    again after a try-again, and asks once per name."""
    import asyncio
    import socket

    from infra.rehearse import proxy

    asked: list[tuple[str, int]] = []
    answers = iter([socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")] * 2 + [None])

    async def getaddrinfo(host: str, port: int, *, family: int = 0, type: int = 0) -> list[Any]:  # noqa: A002
        asked.append((host, family))
        if host == "nowhere.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        err = next(answers)
        if err is not None:
            raise err
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.80", port))]

    monkeypatch.setattr(proxy, "_addresses", {})
    pause = asyncio.sleep
    monkeypatch.setattr(proxy.asyncio, "sleep", lambda _s: pause(0))

    async def main() -> list[str]:
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
        got = await asyncio.gather(*(proxy.address("deb.debian.org", 80) for _ in range(3)))
        with pytest.raises(socket.gaierror):
            await proxy.address("nowhere.invalid", 80)
        return list(got)

    assert asyncio.run(main()) == ["203.0.113.80"] * 3
    assert asked == [("deb.debian.org", socket.AF_INET)] * 3 + [("nowhere.invalid", socket.AF_INET)]
