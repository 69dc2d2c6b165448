"""The command line explains itself: grouped commands, a version, help on every option a user types."""

from __future__ import annotations

import argparse
import platform
import re
import subprocess

from tests.conftest import MQTTLAB
from workloads.cli import COMMAND_GROUPS, build_parser

# the steps the Azure program runs on its VMs: documented by the program, not typed by a user
VM_STEPS = {"host", "results", "monitor"}


def options_without_help(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[str]:
    out: list[str] = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                out += options_without_help(sp, (*prefix, name))
        elif a.help is None and a.dest != "help":
            out.append(f"{' '.join(prefix)} {'/'.join(a.option_strings) or a.dest}")
    return out


def test_every_option_a_user_types_says_what_it_does() -> None:
    missing = [m for m in options_without_help(build_parser()) if m.split()[0] not in VM_STEPS]
    assert missing == []


def test_the_top_level_help_lists_every_command_once_in_its_group() -> None:
    text = subprocess.run([*MQTTLAB, "--help"], capture_output=True, text=True, check=True).stdout
    names = [n for _t, group in COMMAND_GROUPS for n in group]
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(names) == sorted(sub.choices)  # every command has a group, and no group names a missing one
    commands = text[text.index("run the experiment:"):text.index("positional arguments:")]
    listed = re.findall(r"^  (\w+)\s{2,}\S", commands, re.M)
    assert sorted(listed) == sorted(names)
    vm_group = text.index("steps on the Azure VMs")
    assert all(text.index(f"\n  {n} ") > vm_group for n in VM_STEPS)
    assert all(text.index(f"\n  {n} ") < vm_group for n in set(names) - VM_STEPS)
    assert "exit status:" in text


def test_version_names_the_program_mosquitto_and_the_kernel() -> None:
    out = subprocess.run([*MQTTLAB, "--version"], capture_output=True, text=True, check=True).stdout
    mosquitto = re.search(r"mosquitto version (\S+)", subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout)
    assert mosquitto is not None
    lines = out.splitlines()
    assert re.fullmatch(r"mqttlab \d+\.\d+\.\d+", lines[0])
    assert lines[1] == f"mosquitto {mosquitto.group(1)}"
    assert lines[2].startswith(f"kernel {platform.release()}, ") and "IPVS" in lines[2]


def test_scenario_options_give_their_unit_and_default_and_emqtt_bench_letters() -> None:
    text = subprocess.run([*MQTTLAB, "lab", "run", "--help"], capture_output=True, text=True, check=True).stdout
    flat = " ".join(text.split())
    assert "-I N, --interval-ms N time between two messages of one publisher (default 500 ms)" in flat
    assert "-q N, --qos N" in flat and "-t TEXT, --topic TEXT" in flat
    assert "(default 6000 messages)" in flat
    short = build_parser("lab").parse_args(["lab", "run", "-s", "distributed", "-I", "20", "-q", "2", "-t", "x/y"])
    assert (short.scenario_intervalMs, short.scenario_qos, short.scenario_topic) == (20, 2, "x/y")
