"""Provision the MQTT/IPVS testbed on Azure, run the benchmark, export where the results are."""

from infra.program import build

build()
