"""The nftables tables a fault installs, as text (``nft -f -`` reads them): pure, so a test reads
exactly what the lab and the VMs load."""

from __future__ import annotations


def bridge_cut_rules(table: str, hub: str, remote: str, port: int, host: str | None = None) -> str:
    """Drop both directions of the hub's bridge to ``remote``. The bridge should leave from the
    hub's own address (``bridge_bind_address``), but the lab's Debian Mosquitto 2.0.11 connects a
    bridge in two asynchronous steps and leaves from the brokers host's address instead (its log:
    "New bridge connected from <host address>"), so ``host`` is dropped too: that also cuts the
    remote broker's monitor for the same span (it resumes after), and nothing else."""
    src = f"{{ {hub}, {host} }}" if host else hub
    return (f"table ip {table} {{\n\tchain output {{\n\t\ttype filter hook output priority -300; policy accept;\n"
            f"\t\tip saddr {src} ip daddr {remote} tcp dport {port} drop\n"
            f"\t\tip saddr {remote} tcp sport {port} ip daddr {src} drop\n\t}}\n}}\n")


def director_dead_rules(table: str, vip: str, port: int, brokers: list[str], broker_port: int) -> str:
    """A silent director: nothing reaches its entry point (local clients, forwarded clients) and
    nothing it sends or forwards to the brokers, nor their answers, gets through."""
    bset = "{ " + ", ".join(brokers) + " }"
    return (f"table ip {table} {{\n"
            f"\tchain prerouting {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n"
            f"\t\tip daddr {vip} tcp dport {port} drop\n\t\tip saddr {bset} tcp sport {broker_port} drop\n\t}}\n"
            f"\tchain output {{\n\t\ttype filter hook output priority -300; policy accept;\n"
            f"\t\tip daddr {vip} tcp dport {port} drop\n\t\tip daddr {bset} tcp dport {broker_port} drop\n\t}}\n}}\n")


def hub_bridge_cut_rules(table: str, hub: str, remote: str, port: int) -> str:
    """In the hub's own namespace: its packets to the remote broker and the remote's answers."""
    return (f"table ip {table} {{\n"
            f"\tchain output {{\n\t\ttype filter hook output priority -300; policy accept;\n"
            f"\t\tip saddr {hub} ip daddr {remote} tcp dport {port} drop\n\t}}\n"
            f"\tchain prerouting {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n"
            f"\t\tip saddr {remote} tcp sport {port} ip daddr {hub} drop\n\t}}\n}}\n")
