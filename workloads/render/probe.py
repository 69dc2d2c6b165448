"""The bytes of the MQTT health checks: a CONNECT, the CONNACK it must draw, a DISCONNECT.

keepalived's check is ``probe.sh`` beside this file (bash: a check once per interval for every
broker must not cost an interpreter start); HAProxy's ``tcp-check`` sends these bytes itself.
Both send the same CONNECT, which ``tests/test_health.py`` checks byte for byte. Any CONNACK
counts, whatever its return code: a broker answering "not authorized" (the checks have no
credentials) is alive and speaking MQTT.
"""

from __future__ import annotations

CONNACK = bytes((0x20, 0x02))  # any CONNACK (MQTT 3.1.1): the fixed header and remaining length


def connect_packet(client_id: str, keepalive: int = 5) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session: the bytes HAProxy's tcp-check and probe.sh send."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02" + keepalive.to_bytes(2, "big") + len(cid).to_bytes(2, "big") + cid
    return bytes((0x10, len(body))) + body  # client ids here are short: one length byte


DISCONNECT = bytes((0xE0, 0x00))
