"""Bad paths given to any subcommand end in one line on stderr and exit status 2, never a traceback.

The commands are read from the real parser (``workloads.cli.build_parser``): a command with an
argument that names a file or folder must be exercised here or exempted with a reason, so a new
one is not forgotten. The matrix runs through ``workloads.cli.main`` in this process (a
traceback there is an exception the test sees); a few cases run the installed entry point as a
subprocess to show the same from the outside.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MQTTLAB, ROOT
from workloads import cli
from workloads.analysis.synthetic import reference_truth, write_run
from workloads.base.errors import LabError, RunFailed
from workloads.describe.config import ConfigError

# a command's argument is about a path when its name or its help says so
PATH_DEST = re.compile(r"(^|_)(out|dir|dirs|file|path|socket|table|runs|security)($|_)")
PATH_HELP = re.compile(r"\b(file|folder|directory|path|socket)\b", re.IGNORECASE)

# what each kind of argument is fed: every way it can be wrong
KINDS = {
    "run_dir": ("missing", "file", "empty_folder", "garbage_manifest", "binary_manifest", "manifest_folder", "manifest_list",
                "binary_counts", "counts_not_numbers"),
    "campaign_dir": ("missing", "file", "not_campaign", "garbage_campaign", "campaign_folder"),
    "in_file": ("missing", "folder", "binary"),
    "json_file": ("missing", "folder", "garbage", "binary", "list"),
    "campaign_file": ("missing", "folder", "binary"),
    "project_dir": ("missing", "file", "stack_binary", "stack_garbage", "stack_folder"),
    "out_dir": ("file", "under_file"),
    "out_run_dir": ("file", "under_file", "garbage_manifest", "binary_manifest", "manifest_folder", "manifest_list"),
    "out_file": ("folder", "under_file"),
}

P = "{path}"  # the bad path goes here
OK_OUT = "{ok_out}"  # a folder that does not exist yet: it must still not exist afterwards
RUN = "{run}"  # a valid run directory
CAMPAIGN = str(ROOT / "campaigns" / "capacity-small.yaml")
BENCH = ["--target", "127.0.0.1:9", "--publishers", "1", "--subscribers", "1", "--messages", "1", "--time-limit-s", "7",
         "--drain-s", "1", "--quiet"]
HOST_RUN = ["-s", "smoke", "--run-id", "r1", "--host", "brokers"]

# (command, argument) -> (kind, argv with the bad path at P)
CASES: dict[tuple[str, str], tuple[str, list[str]]] = {
    ("render", "--out"): ("out_dir", ["render", "-s", "smoke", "--out", P]),
    ("render", "--project-dir"): ("project_dir", ["render", "-s", "smoke", "--project-dir", P, "--out", OK_OUT]),
    ("plan", "--project-dir"): ("project_dir", ["plan", "-s", "smoke", "--project-dir", P]),
    ("config show", "--project-dir"): ("project_dir", ["config", "show", "-s", "smoke", "--project-dir", P]),
    ("monitor brokers", "--out"): ("out_file", ["monitor", "brokers", "--broker", "b=127.0.0.1:9", "--duration", "0.1", "--out", P]),
    ("monitor brokers", "--security"): ("json_file", ["monitor", "brokers", "--broker", "b=127.0.0.1:9", "--duration", "0.1",
                                                      "--out", f"{OK_OUT}/m.csv", "--security", P]),
    ("monitor cgroups", "--out"): ("out_file", ["monitor", "cgroups", "--group", "b=v1:/sys/fs/cgroup/cpu", "--duration", "0.1", "--out", P]),
    ("monitor balancer", "--out"): ("out_file", ["monitor", "balancer", "--kind", "nftables", "--vip", "127.0.0.1:9", "--duration", "0.1",
                                                 "--out", P]),
    ("monitor balancer", "--conn-table"): ("out_file", ["monitor", "balancer", "--kind", "nftables", "--vip", "127.0.0.1:9",
                                                        "--duration", "0.1", "--out", f"{OK_OUT}/b.csv", "--conn-table", P]),
    ("bench summary", "run_dir"): ("run_dir", ["bench", "summary", P]),
    ("bench emqtt", "--parse-pub"): ("in_file", ["bench", "emqtt", "--target", "127.0.0.1:9", "--parse-pub", P]),
    ("bench emqtt", "--parse-sub"): ("in_file", ["bench", "emqtt", "--target", "127.0.0.1:9", "--parse-sub", P]),
    ("bench emqtt", "--security"): ("json_file", ["bench", "emqtt", "--target", "127.0.0.1:9", "--security", P]),
    ("bench emqtt", "--project-dir"): ("project_dir", ["bench", "emqtt", "--target", "127.0.0.1:9", "-s", "smoke", "--project-dir", P]),
    ("lab run", "--out"): ("out_dir", ["lab", "run", "-s", "smoke", "--out", P]),
    ("lab run", "--project-dir"): ("project_dir", ["lab", "run", "-s", "smoke", "--project-dir", P, "--out", OK_OUT]),
    ("lab calibrate", "--out"): ("out_dir", ["lab", "calibrate", "-s", "smoke", "--out", P]),
    ("lab calibrate", "--project-dir"): ("project_dir", ["lab", "calibrate", "-s", "smoke", "--project-dir", P, "--out", OK_OUT]),
    ("lab up", "--out"): ("out_dir", ["lab", "up", "-s", "smoke", "--out", P]),
    ("lab up", "--project-dir"): ("project_dir", ["lab", "up", "-s", "smoke", "--project-dir", P, "--out", OK_OUT]),
    ("results fetch", "--out"): ("out_dir", ["results", "fetch", "--url", "https://127.0.0.1:9/c", "--prefix", "p/", "--out", P]),
    ("results fetch", "--ca-file"): ("in_file", ["results", "fetch", "--url", "https://127.0.0.1:9/c", "--prefix", "p/", "--out", OK_OUT,
                                                 "--ca-file", P]),
    ("report", "run_dirs"): ("run_dir", ["report", P, "--out", OK_OUT]),
    ("report", "--out"): ("out_dir", ["report", RUN, "--out", P]),
    ("campaign report", "dir"): ("campaign_dir", ["campaign", "report", P]),
    ("campaign keep", "dir"): ("campaign_dir", ["campaign", "keep", P, "--to", OK_OUT]),
    ("campaign keep", "--to"): ("out_dir", ["campaign", "keep", RUN, "--to", P]),
    ("campaign report", "--out"): ("out_dir", ["campaign", "report", RUN, "--out", P]),
}
for _cmd in ("run", "sub", "pub"):
    CASES |= {
        (f"bench {_cmd}", "--out"): ("out_run_dir", ["bench", _cmd, *BENCH, "--out", P]),
        (f"bench {_cmd}", "--ready-file"): ("out_file", ["bench", _cmd, *BENCH, "--out", OK_OUT, "--ready-file", P]),
        (f"bench {_cmd}", "--security"): ("json_file", ["bench", _cmd, *BENCH, "--out", OK_OUT, "--security", P]),
        (f"bench {_cmd}", "--project-dir"): ("project_dir", ["bench", _cmd, *BENCH, "-s", "smoke", "--project-dir", P, "--out", OK_OUT]),
    }
for _cmd in ("run", "capacity"):
    CASES |= {
        (f"campaign {_cmd}", "file"): ("campaign_file", ["campaign", _cmd, P, "--out", OK_OUT, "--dry-run"]),
        (f"campaign {_cmd}", "--out"): ("out_dir", ["campaign", _cmd, CAMPAIGN, "--out", P, "--dry-run"]),
        (f"campaign {_cmd}", "--project-dir"): ("project_dir", ["campaign", _cmd, CAMPAIGN, "--project-dir", P, "--out", OK_OUT, "--dry-run"]),
    }
for _cmd, _extra in (("security-install", []), ("brokers-up", []), ("probe-brokers", ["--host", "ipvs1"]),
                     ("balancer-apply", ["--host", "ipvs1"])):
    CASES[(f"host {_cmd}", "--project-dir")] = ("project_dir", ["host", _cmd, "-s", "smoke", *_extra, "--project-dir", P])
for _cmd in ("faults-run", "collect", "verdict"):
    _extra = {"faults-run": ["--start-at", "0", "--until", "0"], "collect": ["--url", "http://127.0.0.1:9/c"],
              "verdict": ["--url", "http://127.0.0.1:9/c"]}[_cmd]
    CASES[(f"host {_cmd}", "--project-dir")] = ("project_dir", ["host", _cmd, *HOST_RUN, *_extra, "--project-dir", P, "--runs", OK_OUT])
for _cmd, _extra in (("monitors-start", ["--role", "brokers"]), ("bench-subs", []), ("bench-pubs", []), ("bench-finish", []),
                     ("faults-start", ["--start-at", "0"]), ("faults-run", ["--start-at", "0", "--until", "0"]),
                     ("collect", ["--url", "http://127.0.0.1:9/c"]), ("verdict", ["--url", "http://127.0.0.1:9/c"])):
    CASES[(f"host {_cmd}", "--runs")] = ("out_dir", ["host", _cmd, *HOST_RUN, *_extra, "--runs", P])

RECORDED = ("a recorded step: whatever fails is written to its run directory and it exits 0, so the collection after it still "
            "happens (workloads/hosts/azure/cli.py recorded); --runs is covered")
EXEMPT = {
    ("monitor balancer", "--haproxy-socket"): "a live socket, sampled every interval: a missing one is a failed sample, logged, and the "
                                              "monitor goes on (a restarting HAProxy comes back)",
    ("rehearse", "--run-id"): "a run id, not a path: the program checks it before it registers anything (test_rehearse.py)",
    ("host brokers-down", "--project-dir"): "accepted and not read: the step stops the containers of the rendered compose file",
    ("host bench-start", "--project-dir"): "accepted and not read: the step prints a start time",
    **{(f"host {c}", "--project-dir"): RECORDED for c in ("monitors-start", "bench-subs", "bench-pubs", "bench-finish", "faults-start")},
    **{(f"bench {c}", "--host"): "a host name (the help says where it goes in the run directory)" for c in ("run", "sub", "pub", "emqtt")},
}


def leaves(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(words), parser
        return
    for name, sub in subs[0].choices.items():
        yield from leaves(sub, (*words, name))


def path_arguments() -> set[tuple[str, str]]:
    """Every (command, argument) of the real parser that names a file or folder."""
    found = set()
    for command, parser in leaves(cli.build_parser()):
        for a in parser._actions:
            if a.nargs == 0 or a.choices or a.type not in (None, str) or a.dest.startswith("scenario_") or a.help == argparse.SUPPRESS:
                continue
            if PATH_DEST.search(a.dest) or PATH_HELP.search(a.help or ""):
                found.add((command, a.option_strings[-1] if a.option_strings else a.dest))
    return found


def test_every_command_with_a_path_argument_is_exercised_or_exempt_with_a_reason() -> None:
    found = path_arguments()
    assert found - CASES.keys() - EXEMPT.keys() == set(), "path arguments neither in CASES nor in EXEMPT"
    assert (CASES.keys() | EXEMPT.keys()) - found == set(), "CASES or EXEMPT name arguments the parser does not have"
    assert len(found) > 40 and ("campaign report", "dir") in found  # the walk reads the real parser


def make_bad(kind: str, base: Path) -> Path:
    """A path that is wrong in the way ``kind`` says, under ``base``."""
    p = base / kind
    if kind == "missing":
        return p
    if kind == "file":
        p.write_text("x\n")
    elif kind == "under_file":
        (base / "a-file").write_text("x\n")
        return base / "a-file" / "below"
    elif kind in ("folder", "empty_folder"):
        p.mkdir()
    elif kind == "binary":
        p.write_bytes(bytes(range(128, 256)))
    elif kind == "garbage":
        p.write_text("{not json\n")
    elif kind == "list":
        p.write_text("[1, 2]\n")
    elif kind == "not_campaign":
        return ROOT / "docs" / "host-bound"  # a report's outputs alone, not a campaign directory
    elif kind in ("binary_counts", "counts_not_numbers"):  # a sound manifest over damaged per-client counts
        write_run(p, reference_truth(sent=20))
        counts = sorted(p.glob("bench/*/subscribers-*.csv"))[0]
        if kind == "binary_counts":
            counts.write_bytes(b"sub,pub\n\xff\xfe\x00\x81")
        else:
            counts.write_text("sub,client_id,pub,received,duplicates,out_of_order\n0,c,0,lots,0,0\n")
    elif kind.startswith("stack_"):  # a project folder whose stack files are broken
        p.mkdir()
        (p / "Pulumi.yaml").write_text("name: mqttlab\n")
        for stack in ("smoke", "distributed"):  # the stacks the cases and the campaign file name
            f = p / f"Pulumi.{stack}.yaml"
            if kind == "stack_folder":
                f.mkdir()
            else:
                f.write_bytes(b"\xff\xfeconfig: 1\n" if kind == "stack_binary" else b"config: [\n")
    else:
        p.mkdir()
        name = "campaign.json" if "campaign" in kind else "manifest.json"
        target = p / name
        if kind.endswith("_folder"):
            target.mkdir()
        elif kind.startswith("binary"):
            target.write_bytes(b"\xff\xfe\x00garbage")
        elif kind.endswith("_list"):
            target.write_text("[1, 2]\n")
        else:
            target.write_text("{nope")
    return p


def cases() -> Iterator[object]:
    for (command, option), (kind, argv) in sorted(CASES.items()):
        for bad in KINDS[kind]:
            yield pytest.param(command, argv, bad, id=f"{command} {option} given {bad.replace('_', ' ')}")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("run") / "run1", reference_truth(sent=20))


def main_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("command", "argv", "bad"), list(cases()))
def test_a_bad_path_is_one_line_naming_it_and_exit_status_2(command: str, argv: list[str], bad: str, tmp_path: Path, run_dir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = make_bad(bad, tmp_path)
    ok_out = tmp_path / "ok-out"
    args = [a.replace(P, str(path)).replace(OK_OUT, str(ok_out)).replace(RUN, str(run_dir)) for a in argv]
    code, err = main_of(args, capsys)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1, (args, err)
    assert lines[0].startswith("mqttlab") and "Traceback" not in err
    named = path.parent if bad == "under_file" else path
    assert str(named) in lines[0] or str(path) in lines[0], lines[0]
    assert not ok_out.exists(), "a refused command created its output"


@pytest.mark.parametrize("argv", [
    ["render", "-s", "distributed", "--out", "{file}"],
    ["campaign", "report", "{missing}"],
    ["campaign", "report", str(ROOT / "docs" / "host-bound")],
    ["bench", "summary", "{file}"],
], ids=["render into a file", "campaign report on a missing folder", "campaign report on a report folder", "bench summary on a file"])
def test_the_installed_command_prints_one_line_and_no_traceback(argv: list[str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x\n")
    args = [a.format(file=tmp_path / "file", missing=tmp_path / "missing") for a in argv]
    cp = subprocess.run([*MQTTLAB, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert cp.returncode == 2 and len(cp.stderr.splitlines()) == 1 and cp.stderr.startswith("mqttlab: "), cp.stderr
    assert "Traceback" not in cp.stdout + cp.stderr


def test_a_usage_error_is_one_line_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = main_of(["render", "-s", "smoke"], capsys)
    assert code == 2 and err.splitlines() == ["mqttlab render: the following arguments are required: --out (see mqttlab render --help)"]


def test_exit_statuses_follow_the_kind_of_error() -> None:
    assert cli.exit_code_of(ConfigError("--qos", 7, "0, 1 or 2")) == 2
    assert cli.exit_code_of(LabError("missing tools: ip")) == 3
    assert cli.exit_code_of(RunFailed("subscribers did not all connect")) == 1
    assert cli.exit_code_of(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")) == 2
    assert cli.exit_code_of(OSError(errno.ECONNREFUSED, "Connection refused")) is None  # no path: not about user input
    assert cli.exit_code_of(KeyError("plan")) is None


def test_every_error_type_in_the_exit_code_table_exists_under_that_name() -> None:
    import importlib

    for name, _code in cli.EXIT_CODES:
        module, _, cls = name.rpartition(".")
        found = getattr(importlib.import_module(module), cls)
        assert isinstance(found, type) and issubclass(found, Exception) and f"{found.__module__}.{found.__qualname__}" == name


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_plan", broken)
    with pytest.raises(KeyError):
        cli.main(["plan", "-s", "smoke"])


def test_a_failed_command_line_is_one_line_with_its_output_after_it() -> None:
    text = cli.one_line(LabError("ip link add x failed (2): RTNETLINK answers\nFile exists\n"))
    assert text == "ip link add x failed (2): RTNETLINK answers: File exists"


def test_the_top_level_help_lists_the_exit_statuses() -> None:
    cp = subprocess.run([*MQTTLAB, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cp.returncode == 0
    for line in ("0  done", "1  a run started and failed", "2  bad usage or configuration", "3  a precondition is missing"):
        assert line in cp.stdout


@pytest.mark.parametrize("argv", [
    ["bench", "emqtt", "--target", "127.0.0.1:9", "--host-count", "0"],
    ["bench", "run", "--target", "127.0.0.1:9", "--workers", "0", "--dry-run", "--out", OK_OUT],
    ["monitor", "balancer", "--kind", "nftables", "--duration", "0.1", "--out", f"{OK_OUT}/b.csv"],
    ["monitor", "balancer", "--kind", "haproxy", "--duration", "0.1", "--out", f"{OK_OUT}/b.csv"],
    ["results", "fetch", "--url", "not-a-url?sig=SECRET", "--prefix", "p/", "--out", OK_OUT],
    ["campaign", "run", CAMPAIGN, "--out", OK_OUT, "--dry-run", "--time-budget", "-1"],
], ids=["emqtt on zero hosts", "a bench with no workers", "an nftables monitor without its VIP", "a HAProxy monitor without its socket",
        "a fetch from something that is not a URL", "a negative time budget"])
def test_a_bad_value_is_one_line_and_exit_status_2(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok_out = tmp_path / "ok-out"
    code, err = main_of([a.replace(OK_OUT, str(ok_out)) for a in argv], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("mqttlab"), err
    assert "SECRET" not in err and not ok_out.exists()


def test_lab_down_refuses_an_id_that_would_reach_outside_its_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from workloads.hosts.lab import lab

    (tmp_path / "state").mkdir()
    (tmp_path / "victim.json").write_text("{}")
    monkeypatch.setattr(lab, "STATE_DIR", tmp_path / "state")
    code, err = main_of(["lab", "down", "--id", "../victim"], capsys)
    assert code == 2 and "is not a lab id" in err and len(err.splitlines()) == 1
    assert (tmp_path / "victim.json").exists()


def test_a_lab_run_that_fails_after_it_started_exits_1_and_names_its_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The lab's own checks pass and its run directory exists; then bringing it up fails."""
    from workloads.hosts.lab import lab

    def up_fails(self: lab.Lab) -> None:
        raise LabError("ip netns add x failed (1): Cannot create\nnamespace file")

    monkeypatch.setattr(lab.Lab, "up", up_fails)
    code, err = main_of(["lab", "run", "-s", "smoke", "--quiet", "--out", str(tmp_path / "runs")], capsys)
    (run_dir,) = (tmp_path / "runs").iterdir()
    errors = [line for line in err.splitlines() if not line.startswith("[lab] warning")]  # another lab's leftovers may be named
    assert code == 1 and errors == [f"mqttlab: ip netns add x failed (1): Cannot create: namespace file (run directory {run_dir})"]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "partial"


def test_an_output_file_in_a_folder_yet_to_be_made_is_written_there(tmp_path: Path) -> None:
    """out_file accepts a file whose folder does not exist yet; the writer makes the folder."""
    from tests.test_bench import Broker

    broker = Broker(tmp_path)
    try:
        cp = subprocess.run([*MQTTLAB, "bench", "run", "--target", broker.target, "--out", str(tmp_path / "run"), "--publishers", "1",
                             "--subscribers", "1", "--messages", "5", "--interval-ms", "10", "--drain-s", "2", "--quiet",
                             "--ready-file", str(tmp_path / "not" / "yet" / "ready")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    finally:
        broker.stop()
    assert cp.returncode == 0, cp.stderr
    assert float((tmp_path / "not" / "yet" / "ready").read_text()) > 0
