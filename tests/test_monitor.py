"""Monitors against real brokers; the balancer parsers against the tools' real output format."""

from __future__ import annotations

import csv
import signal
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.conftest import MQTTLAB, ROOT, wait_for
from tests.test_bench import Broker
from workloads.hosts.lab import netns
from workloads.hosts.monitor import BALANCER_COLUMNS, BROKER_COLUMNS, parse_conntrack, parse_haproxy_stat, parse_ipvs


def start_monitor(b: Broker, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*MQTTLAB, "monitor", "brokers", "--broker", f"b1={b.target}@{b.proc.pid}", "--interval", "0.3", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def csv_rows(out: Path) -> list[dict[str, str]]:
    """What the monitor has written so far (nothing yet: no rows)."""
    try:
        with out.open() as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def test_broker_monitor_writes_documented_columns_and_sees_drops(tmp_path: Path) -> None:
    b = Broker(tmp_path, "max_queued_messages 5\nmax_inflight_messages 5\n")
    out = tmp_path / "brokers.csv"
    mon = start_monitor(b, out)

    def written() -> list[dict[str, str]]:
        return csv_rows(out)

    def last(col: str) -> int:
        vals = [int(r[col]) for r in written() if r.get(col)]
        return vals[-1] if vals else -1

    try:
        # bounded by what the monitor has written, not by a guess of how fast it writes on a busy machine
        wait_for(lambda: last("msgs_dropped") == 0 and len(written()) >= 3, 60, "rows with the broker's counters before the load")
        stuck = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stuck-subscriber")
        stuck.connect("127.0.0.1", b.port)
        stuck.subscribe("load", qos=1)
        stuck.loop(1.0)
        stuck.loop(0.5)  # SUBACK read; from now on nothing reads or acknowledges
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="publisher")
        pub.connect("127.0.0.1", b.port)
        pub.loop_start()
        for _ in range(200):
            pub.publish("load", b"x" * 100, qos=1)
        wait_for(lambda: last("msgs_dropped") > 150 and last("msgs_received") >= 200 and len(written()) >= 10, 60,
                 "the broker's $SYS counters to show the drops")
        pub.loop_stop()
    finally:
        mon.send_signal(signal.SIGTERM)
        assert mon.wait(15) == 0, mon.stderr.read() if mon.stderr else ""
        b.stop()
    with out.open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == BROKER_COLUMNS
        rows = list(reader)
    assert len(rows) >= 10 and {r["broker"] for r in rows} == {"b1"}
    assert all(int(r["mem_bytes"]) > 0 for r in rows)
    assert all(float(r["cpu_pct"]) >= 0 for r in rows[1:])
    dropped = [int(r["msgs_dropped"]) for r in rows if r["msgs_dropped"]]
    assert dropped[0] == 0 and dropped[-1] > 150, dropped  # 200 sent, 5 in flight + 5 queued at most
    assert max(int(r["clients_connected"]) for r in rows if r["clients_connected"]) >= 3  # monitor, stuck, publisher
    assert max(int(r["msgs_received"]) for r in rows if r["msgs_received"]) >= 200


IPVS_STATS = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.3.0.10:1883                      160    48210    47990  3301220  5120004
  -> 10.2.0.20:1883                       54    16100    16010  1100100  1700001
  -> 10.2.0.21:1883                       53    16050    15990  1100060  1710002
  -> 10.2.0.22:1883                       53    16060    15990  1101060  1710001
"""
IPVS_LIST = """\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.3.0.10:1883 lc
  -> 10.2.0.20:1883               Masq    1      54         0
  -> 10.2.0.21:1883               Masq    1      53         1
  -> 10.2.0.22:1883               Masq    1      53         0
"""


def test_ipvs_output_is_joined_per_real_server() -> None:
    rows = parse_ipvs(IPVS_STATS, IPVS_LIST)
    assert [r["real"] for r in rows] == ["10.2.0.20:1883", "10.2.0.21:1883", "10.2.0.22:1883"]
    assert rows[1] == {"virtual": "10.3.0.10:1883", "real": "10.2.0.21:1883", "total_conns": 53, "packets_in": 16050, "packets_out": 15990,
                       "bytes_in": 1100060, "bytes_out": 1710002, "active_conns": 53, "inactive_conns": 1, "status": "UP"}
    assert set(rows[0]) <= set(BALANCER_COLUMNS)


def test_haproxy_and_conntrack_parsers() -> None:
    stat = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,addr\n"
            "mqtt,FRONTEND,,,3,5,20000,9,100,200,\n"
            "brokers,broker1,0,0,2,3,,5,60,120,198.18.0.20:1883\n"
            "brokers,broker2,0,0,1,2,,4,40,80,198.18.0.21:1883\n"
            "brokers,BACKEND,0,0,3,5,,9,100,200,\n")
    rows = parse_haproxy_stat(stat)
    assert [(r["real"], r["active_conns"], r["total_conns"]) for r in rows] == [("198.18.0.20:1883", 2, 5), ("198.18.0.21:1883", 1, 4)]
    ct = ("tcp      6 431999 ESTABLISHED src=198.18.1.10 dst=198.18.1.10 sport=40000 dport=1883 src=198.18.0.20 dst=198.18.1.10 sport=1883 dport=40000 [ASSURED] mark=0 use=1\n"
          "tcp      6 431999 ESTABLISHED src=198.18.1.10 dst=198.18.1.10 sport=40001 dport=1883 src=198.18.0.21 dst=198.18.1.10 sport=1883 dport=40001 [ASSURED] mark=0 use=1\n"
          "tcp      6 119 TIME_WAIT src=198.18.1.10 dst=198.18.1.10 sport=40002 dport=1883 src=198.18.0.21 dst=198.18.1.10 sport=1883 dport=40002 [ASSURED] mark=0 use=1\n"
          "tcp      6 431999 ESTABLISHED src=198.18.1.10 dst=198.18.0.99 sport=40003 dport=22 src=198.18.0.99 dst=198.18.1.10 sport=22 dport=40003 mark=0 use=1\n")
    rows = parse_conntrack(ct, "198.18.1.10", 1883)
    assert [(r["real"], r["active_conns"], r["inactive_conns"]) for r in rows] == [("198.18.0.20:1883", 1, 0), ("198.18.0.21:1883", 1, 1)]


def test_a_broker_started_again_is_sampled_again(tmp_path: Path) -> None:
    """A restart fault gives the broker a new process: the rows go blank while it is dead, then
    carry the new process's memory and CPU (found by its listening socket), not the old pid's."""
    from workloads.hosts.monitor import listener_pid

    b = Broker(tmp_path)
    assert listener_pid("127.0.0.1", b.port) == b.proc.pid
    assert listener_pid("127.0.0.2", b.port) is None  # another address at that port is not ours
    out = tmp_path / "brokers.csv"
    mon = start_monitor(b, out)

    def rows() -> list[dict[str, str]]:
        return csv_rows(out)

    again = None
    try:
        wait_for(lambda: len([r for r in rows() if r["mem_bytes"]]) >= 2, 60, "rows of the first broker")
        b.proc.send_signal(signal.SIGKILL)  # not reaped: a zombie, as a killed lab broker is until it is started again
        wait_for(lambda: Path(f"/proc/{b.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 30, "the broker a zombie")
        dead_from = len(rows())
        wait_for(lambda: len([r for r in rows()[dead_from:] if not r["mem_bytes"] and not r["cpu_pct"]]) >= 2, 60,
                 "blank rows while nothing listens")
        conf = next(tmp_path.glob("mosquitto-*.conf"))
        again = netns.spawn(["mosquitto", "-c", str(conf)], None, tmp_path / "again.log")
        netns.wait_tcp(None, "127.0.0.1", b.port)
        wait_for(lambda: len([r for r in rows()[dead_from:] if r["cpu_pct"]]) >= 2, 60, "rows of the broker started again")
    finally:
        mon.send_signal(signal.SIGTERM)
        assert mon.wait(15) == 0, mon.stderr.read() if mon.stderr else ""
        if again is not None:
            netns.stop(again)
        b.stop()
    after = rows()[dead_from:]
    assert all(r["mem_bytes"] != "0" for r in after)  # a dead broker is blank, not a process of no size
    first_blank = next(i for i, r in enumerate(after) if not r["mem_bytes"])
    back = [r for r in after[first_blank:] if r["mem_bytes"]]
    assert back and all(int(r["mem_bytes"]) > 0 for r in back) and all(float(r["cpu_pct"]) >= 0 for r in back if r["cpu_pct"])
