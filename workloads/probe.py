"""An MQTT liveness probe: CONNECT, expect CONNACK accepted, DISCONNECT; exit 0 if it did.

keepalived runs it as a MISC_CHECK once per interval for every real server, so it imports
nothing but the standard library (``python3 -I -S probe.py`` starts in a few milliseconds) and
every step is bounded by one deadline. An open port is not enough: a paused or wedged broker
still accepts TCP connections in the kernel's backlog but never answers CONNECT.

Any CONNACK counts, whatever its return code: a broker that answers "not authorized" (the probe
has no credentials when the brokers require them) is alive and answering MQTT, which is all a
health check may decide; whether clients are let in is the experiment's business.

Usage: ``probe.py HOST PORT [TIMEOUT_S]``. Exit codes: 0 answered, 1 closed/timed out/wrong answer.
"""

from __future__ import annotations

import os
import socket
import sys
import time

CONNACK_OK = bytes((0x20, 0x02, 0x00, 0x00))  # CONNACK, no session present, return code 0
CONNACK = bytes((0x20, 0x02))  # any CONNACK (MQTT 3.1.1): the fixed header and remaining length


def connect_packet(client_id: str, keepalive: int = 5) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session: the bytes HAProxy's tcp-check also sends."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + keepalive.to_bytes(2, "big") + len(cid).to_bytes(2, "big") + cid
    return bytes((0x10, len(body))) + body  # client ids here are short: one length byte


DISCONNECT = bytes((0xE0, 0x00))


def probe(host: str, port: int, timeout: float, client_id: str) -> tuple[bool, str]:
    """(answered, why) within ``timeout`` seconds in total."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(connect_packet(client_id))
            got = b""
            while len(got) < 4:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False, f"no CONNACK within {timeout}s"
                s.settimeout(left)
                chunk = s.recv(4 - len(got))
                if not chunk:
                    return False, "closed before CONNACK"
                got += chunk
            if got[:2] != CONNACK:
                return False, f"unexpected answer {got.hex()}"
            if got != CONNACK_OK:
                return True, f"CONNACK return code {got[3]}"  # answered, e.g. not authorized: alive
            s.sendall(DISCONNECT)
            return True, "CONNACK accepted"
    except TimeoutError:
        return False, f"no CONNACK within {timeout}s"
    except OSError as exc:
        return False, str(exc) or type(exc).__name__


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: probe.py HOST PORT [TIMEOUT_S]", file=sys.stderr)
        return 2
    ok, why = probe(argv[0], int(argv[1]), float(argv[2]) if len(argv) == 3 else 1.0, f"mqttlab-probe-{os.getpid()}")
    if not ok:
        print(f"{argv[0]}:{argv[1]}: {why}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
