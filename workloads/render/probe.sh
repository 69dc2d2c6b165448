#!/bin/bash
# An MQTT liveness probe for keepalived's MISC_CHECK: CONNECT, wait for a CONNACK, DISCONNECT.
#
# Usage: probe.sh HOST PORT [TIMEOUT_S]   exit 0: a CONNACK came; 1: refused, closed, silent or
# not MQTT within TIMEOUT_S (default 1) in total; 2: bad usage.
#
# Why bash and not Python: keepalived starts it once per interval for every broker, and starting
# an interpreter with its standard library costs ~70 ms of CPU, which under CPU emulation (the
# micro-VM where the lab finds IPVS) became 6-8 s per probe and alone broke the
# interval x retries bound. bash opens the TCP connection itself (/dev/tcp) and its builtins
# (printf, read -t) do the rest: no other program is started on the way to a verdict.
#
# An open port is not enough: a paused or wedged broker still accepts TCP in the kernel's backlog
# but never answers CONNECT. Any CONNACK counts, whatever its return code: a broker that answers
# "not authorized" (the probe has no credentials when the brokers require them) is alive and
# speaking MQTT, which is all a health check may decide.
#
# The bytes are those of workloads/render/probe.py's connect_packet (MQTT 3.1.1, clean session,
# keepalive 5 s, client id "mqttlab-probe-" and the PID on 7 digits), which HAProxy's check also
# sends; tests/test_health.py compares them.

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: probe.sh HOST PORT [TIMEOUT_S]" >&2
    exit 2
fi
host=$1 port=$2 limit=${3:-1}
export LC_ALL=C  # one byte per character in read -n

# One deadline for the whole probe. Reading is bounded by read -t; connecting is not (a SYN
# nobody answers waits for the kernel's retries), so a watchdog ends the probe at the deadline.
# It sleeps with a builtin read on a pipe nobody writes to: a fork, no program to start.
me=$$
trap 'echo "$host:$port: no CONNACK within ${limit}s" >&2; exit 1' TERM
( read -r -t "$limit" <> <(:); kill -TERM "$me" 2>/dev/null ) &
watchdog=$!
trap 'kill "$watchdog" 2>/dev/null' EXIT

if ! exec 3<>"/dev/tcp/$host/$port"; then
    exit 1  # bash has said why (e.g. "Connection refused")
fi
printf -v cid 'mqttlab-probe-%07d' $(( me % 10000000 ))
# CONNECT: remaining length 33, "MQTT" level 4, flags 0x02 (clean session), keepalive 5,
# client id of 21 bytes
printf '\x10\x21\x00\x04MQTT\x04\x02\x00\x05\x00\x15%s' "$cid" >&3

# The answer byte by byte: read with an empty delimiter returns an empty string for a 0x00 byte.
got=()
for _ in 1 2 3 4; do
    IFS= read -r -d '' -n 1 -t "$limit" -u 3 c
    rc=$?
    if [ $rc -gt 128 ]; then
        echo "$host:$port: no CONNACK within ${limit}s" >&2
        exit 1
    elif [ $rc -ne 0 ] && [ -z "$c" ]; then
        echo "$host:$port: closed before CONNACK" >&2
        exit 1
    fi
    if [ -z "$c" ]; then got+=(0); else printf -v n '%d' "'$c"; got+=("$n"); fi
done
if [ "${got[0]}" != 32 ] || [ "${got[1]}" != 2 ]; then  # 0x20 0x02: CONNACK, 2 bytes follow
    echo "$host:$port: unexpected answer ${got[*]}" >&2
    exit 1
fi
if [ "${got[3]}" = 0 ]; then
    printf '\xe0\x00' >&3  # DISCONNECT, so the broker logs a clean goodbye
fi
exit 0
