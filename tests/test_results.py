"""Results upload and fetch, through the real HTTP client code, against a local stand-in for
the Blob service (Put Blob and List Blobs with a SAS, as Azure answers them)."""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from workloads.analysis.synthetic import reference_truth, write_run
from workloads.bench.rundir import summarize
from workloads.hostcmd import fetch, upload_dir

SAS = "sv=2024-01-01&sr=c&sp=rwl&sig=test"


class BlobStore(BaseHTTPRequestHandler):
    blobs: dict[str, bytes] = {}

    def _authorised(self) -> bool:
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if q.get("sig") != ["test"]:
            self.send_response(403)
            self.end_headers()
            return False
        return True

    def do_PUT(self) -> None:  # noqa: N802
        if not self._authorised():
            return
        assert self.headers["x-ms-blob-type"] == "BlockBlob"
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path.split("/results/", 1)[1])
        self.blobs[name] = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorised():
            return
        parts = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(parts.query)
        if q.get("comp") == ["list"]:
            prefix = q.get("prefix", [""])[0]
            names = sorted(n for n in self.blobs if n.startswith(prefix))
            start = int(q.get("marker", ["0"])[0])
            page = names[start : start + 5]  # small pages, so paging is exercised
            nxt = str(start + 5) if start + 5 < len(names) else ""
            body = "<EnumerationResults><Blobs>" + "".join(f"<Blob><Name>{n}</Name></Blob>" for n in page)
            body += f"</Blobs><NextMarker>{nxt}</NextMarker></EnumerationResults>"
            data = body.encode()
        else:
            data = self.blobs[urllib.parse.unquote(parts.path.split("/results/", 1)[1])]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def store() -> Iterator[str]:
    BlobStore.blobs = {}
    srv = ThreadingHTTPServer(("127.0.0.1", 0), BlobStore)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/results"
    srv.shutdown()


def test_hosts_upload_into_one_prefix_and_fetch_rebuilds_the_run(store: str, tmp_path: Path) -> None:
    run = write_run(tmp_path / "hostview", reference_truth())
    (run / "pids").mkdir()
    (run / "pids" / "bench-sub.pid").write_text("1")
    n = upload_dir(run, store, "distributed/7/", SAS, skip_manifest=False)
    assert n == sum(1 for p in run.rglob("*") if p.is_file()) - 1  # everything but the pid file
    assert not any(k.startswith("distributed/7/pids/") for k in BlobStore.blobs)
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"format_version": 1, "status": "running"}')
    upload_dir(other, store, "distributed/7/", SAS, skip_manifest=True)  # a second host never overwrites it
    dest = fetch(store, "distributed/7/", SAS, tmp_path / "runs")
    assert dest == tmp_path / "runs" / "distributed-7"
    s = summarize(dest)
    assert (s["expected"], s["delivered"], s["lost"], s["status"]) == (800, 781, 19, "complete")
    with pytest.raises(Exception, match="403"):
        fetch(store, "distributed/7/", "sig=wrong", tmp_path / "x")
