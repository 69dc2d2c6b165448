"""The names one run's parts are known by in every record: its clients' MQTT ids (the bench sets
them, the brokers log them, the analysis matches the two) and its brokers' containers."""

from __future__ import annotations


def client_prefix(tag: int) -> str:
    """What every client id of the run with ``tag`` starts with: a broker log line of another
    run (or of a monitor or bridge) never matches."""
    return f"mqttlab-{int(tag):08x}-"


def client_id(tag: int, role: str, index: int) -> str:
    """``role`` is ``pub`` or ``sub``; ``index`` the client's place among its role's clients."""
    return f"{client_prefix(tag)}{role}{index}"


def container(broker: str) -> str:
    """A broker's Docker container on the broker VM (the compose file's ``container_name``)."""
    return f"mqttlab-{broker}"
