"""``mqttlab host ...`` and ``mqttlab results ...``: what Azure's remote commands call on a VM.

Each step is short, bounded, idempotent where it can be, and reads the same stack file and
renderers as the local lab; the remote commands carry no logic of their own.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from workloads.describe.cliargs import add_stack_args
from workloads.hosts.azure.balancer import cmd_balancer_apply, cmd_balancer_clear
from workloads.hosts.azure.bench import cmd_bench_finish, cmd_bench_pubs, cmd_bench_start, cmd_bench_subs, cmd_monitors_start
from workloads.hosts.azure.brokers import cmd_brokers_down, cmd_brokers_up, cmd_probe_brokers, cmd_security_install
from workloads.hosts.azure.collect import cmd_collect, cmd_fetch, cmd_verdict
from workloads.hosts.azure.faults import cmd_faults_run, cmd_faults_start
from workloads.hosts.azure.steps import LOAD_GENERATORS, RUNS, STEPS

STEP_FUNCTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "security-install": cmd_security_install, "brokers-up": cmd_brokers_up, "probe-brokers": cmd_probe_brokers,
    "brokers-down": cmd_brokers_down, "balancer-apply": cmd_balancer_apply, "balancer-clear": cmd_balancer_clear,
    "monitors-start": cmd_monitors_start, "bench-subs": cmd_bench_subs, "bench-start": cmd_bench_start,
    "bench-pubs": cmd_bench_pubs, "faults-start": cmd_faults_start, "faults-run": cmd_faults_run, "bench-finish": cmd_bench_finish,
    "collect": cmd_collect, "verdict": cmd_verdict,
}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("host", help="steps run on an Azure VM by the Pulumi program's remote commands")
    hsub = p.add_subparsers(dest="host_cmd", required=True)

    for step in STEPS:
        x = hsub.add_parser(step.name, help=step.help)
        if step.stack:
            add_stack_args(x)
        if step.run:
            x.add_argument("--run-id", required=True)
            x.add_argument("--runs", default=RUNS)
            x.add_argument("--load-generator", choices=LOAD_GENERATORS, default=LOAD_GENERATORS[0])
        if step.host:
            x.add_argument("--host", required=True, help="this VM's host name in the plan")
        for o in step.options:
            x.add_argument(o.flag, **o.kwargs)
        x.set_defaults(func=STEP_FUNCTIONS[step.name])

    r = sub.add_parser("results", help="results in the Azure container")
    rsub = r.add_subparsers(dest="results_cmd", required=True)
    f = rsub.add_parser("fetch", help="download a run's files into OUT/<stack>-<run-id>/ with your az login")
    f.add_argument("--url", required=True)
    f.add_argument("--prefix", required=True)
    f.add_argument("--out", default="runs")
    f.add_argument("--ca-file", help="a CA bundle to trust instead of the system's (a TLS-inspecting proxy, an emulator)")
    f.set_defaults(func=cmd_fetch)
