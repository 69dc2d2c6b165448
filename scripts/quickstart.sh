#!/usr/bin/env bash
# The main job on a fresh machine: install, then one local lab run of the distributed topology
# (three capped brokers, two balancer/client hosts): 40 publishers send 100 messages each, one every
# 100 ms, so publishing lasts 10 s; the lab's set-up, connecting and drain come around it. Ends with
# the summary. Extra arguments go to `mqttlab lab run`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/mqttlab lab run -s distributed --publishers 40 --subscribers 40 --messages 4000 --interval-ms 100 --qos 1 --out runs "$@"
