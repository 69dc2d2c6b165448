"""Results upload and fetch, through the real HTTP client code, against a local stand-in for
the Blob service (Put Blob, Get Blob and List Blobs, authorised by a SAS or by a managed
identity's bearer token with x-ms-version, as Azure answers them) and for the instance metadata
service that hands a VM its token."""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from workloads.analysis.synthetic import reference_truth, write_run
from workloads.bench.rundir import summarize
from workloads.hostcmd import BlobAuth, fetch, upload_dir

SAS = "sv=2024-01-01&sr=c&sp=rwl&sig=test"
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.mock-managed-identity-token"
USER_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.mock-az-login-token"  # the operator's: Storage Blob Data Reader, read only


class BlobStore(BaseHTTPRequestHandler):
    """Blob service and, under /metadata/, the instance metadata service."""

    blobs: dict[str, bytes] = {}
    token_requests = 0

    def _authorised(self, write: bool = False) -> bool:
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        tokens = [TOKEN] if write else [TOKEN, USER_TOKEN]
        bearer = self.headers.get("Authorization") in [f"Bearer {t}" for t in tokens] and (self.headers.get("x-ms-version") or "") >= "2017-11-09"
        if q.get("sig") != ["test"] and not bearer:
            self.send_response(403)
            self.end_headers()
            return False
        return True

    def _imds(self) -> None:
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        ok = self.headers.get("Metadata") == "true" and q.get("resource") == ["https://storage.azure.com/"] and q.get("api-version") == ["2018-02-01"]
        type(self).token_requests += 1
        data = json.dumps({"access_token": TOKEN, "token_type": "Bearer", "resource": "https://storage.azure.com/"}).encode() if ok else b"{}"
        self.send_response(200 if ok else 400)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # noqa: N802
        if not self._authorised(write=True):
            return
        assert self.headers["x-ms-blob-type"] == "BlockBlob"
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path.split("/results/", 1)[1])
        self.blobs[name] = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/metadata/"):
            return self._imds()
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
    BlobStore.token_requests = 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), BlobStore)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/results"
    srv.shutdown()


def test_hosts_upload_into_one_prefix_and_fetch_rebuilds_the_run(store: str, tmp_path: Path) -> None:
    run = write_run(tmp_path / "hostview", reference_truth())
    (run / "pids").mkdir()
    (run / "pids" / "bench-sub.pid").write_text("1")
    n = upload_dir(run, store, "distributed/7/", BlobAuth(sas=SAS), skip_manifest=False)
    assert n == sum(1 for p in run.rglob("*") if p.is_file()) - 1  # everything but the pid file
    assert not any(k.startswith("distributed/7/pids/") for k in BlobStore.blobs)
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"format_version": 1, "status": "running"}')
    upload_dir(other, store, "distributed/7/", BlobAuth(sas=SAS), skip_manifest=True)  # a second host never overwrites it
    dest = fetch(store, "distributed/7/", BlobAuth(sas=SAS), tmp_path / "runs")
    assert dest == tmp_path / "runs" / "distributed-7"
    s = summarize(dest)
    assert (s["expected"], s["delivered"], s["lost"], s["status"]) == (800, 781, 19, "complete")
    with pytest.raises(Exception, match="403"):
        fetch(store, "distributed/7/", BlobAuth(sas="sig=wrong"), tmp_path / "x")


def imds_of(store: str) -> str:
    return store.rsplit("/results", 1)[0] + "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://storage.azure.com/"


def test_vm_uploads_with_its_managed_identity_and_never_shows_the_token(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workloads.hostcmd import LabError, imds_token

    token = imds_token(imds_of(store))
    assert token == TOKEN and BlobStore.token_requests == 1
    run = write_run(tmp_path / "vm", reference_truth())
    n = upload_dir(run, store, "smoke/1/", BlobAuth(token=token), skip_manifest=False, host="ipvs1")
    assert n > 3 and all(k.startswith("smoke/1/") for k in BlobStore.blobs)
    with pytest.raises(LabError, match="403"):  # a wrong token is refused, and said so
        upload_dir(run, store, "smoke/2/", BlobAuth(token="not-the-token"), skip_manifest=False)
    with pytest.raises(LabError, match="instance metadata service after 2 attempts"):
        imds_token(imds_of(store).replace("resource=https", "resource=http"), attempts=2, pause_s=0)
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err


def test_every_host_keeps_its_own_logs(store: str, tmp_path: Path) -> None:
    for host in ("ipvs1", "ipvs2"):
        rd = tmp_path / host
        (rd / "logs").mkdir(parents=True)
        (rd / "logs" / "bench-sub.log").write_text(f"subscribers of {host}\n")
        (rd / "status").mkdir()
        (rd / "status" / f"{host}-bench-pubs.json").write_text("{}")
        upload_dir(rd, store, "distributed/9/", BlobAuth(sas=SAS), skip_manifest=True, host=host)
    assert BlobStore.blobs["distributed/9/logs/ipvs1/bench-sub.log"] == b"subscribers of ipvs1\n"
    assert BlobStore.blobs["distributed/9/logs/ipvs2/bench-sub.log"] == b"subscribers of ipvs2\n"
    assert "distributed/9/logs/bench-sub.log" not in BlobStore.blobs


def test_verdict_fails_the_run_after_everything_is_uploaded(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from tests.conftest import ROOT
    from workloads.hostcmd import cmd_verdict, record_step

    runs = tmp_path / "runs"
    rd = runs / "5"
    rd.mkdir(parents=True)
    (rd / "manifest.json").write_text(json.dumps({"format_version": 1, "status": "complete", "run_id": "5"}))
    record_step(rd, "ipvs1", "bench-pubs", "ok")
    other = tmp_path / "ipvs2"
    record_step(other, "ipvs2", "bench-pubs", "failed", "LabError: publishers on ipvs2 exited 3")
    auth = BlobAuth(token=TOKEN)
    upload_dir(rd, store, "distributed/5/", auth, skip_manifest=False, host="ipvs1")
    upload_dir(other, store, "distributed/5/", auth, skip_manifest=True, host="ipvs2")
    args = argparse.Namespace(stack="distributed", project_dir=str(ROOT), runs=str(runs), run_id="5", host="ipvs1", url=store, imds=imds_of(store))
    assert cmd_verdict(args) == 1
    out = capsys.readouterr()
    assert "ipvs2 bench-pubs: LabError: publishers on ipvs2 exited 3" in out.err and json.loads(out.out)["status"] == "failed"
    manifest = json.loads(BlobStore.blobs["distributed/5/manifest.json"])
    assert manifest["status"] == "failed" and [b["host"] for b in manifest["failed_steps"]] == ["ipvs2"]
    (other / "status" / "ipvs2-bench-pubs.json").unlink()
    BlobStore.blobs.pop("distributed/5/status/ipvs2-bench-pubs.json")
    assert cmd_verdict(args) == 0  # nothing failed: the run stands


def test_fetch_reads_with_the_users_az_login(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "az").write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom tests.fake_az import main\nsys.exit(main(sys.argv[1:]))\n")
    (bin_dir / "az").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_AZ_LOG", str(tmp_path / "az.jsonl"))
    BlobStore.blobs["smoke/4/manifest.json"] = b'{"status": "complete"}'
    cmd = [sys.executable, "-m", "workloads.cli", "results", "fetch", "--url", store, "--prefix", "smoke/4/", "--out", str(tmp_path)]
    cp = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert (tmp_path / "smoke-4" / "manifest.json").read_bytes() == b'{"status": "complete"}'
    monkeypatch.setenv("FAKE_AZ_LOGGED_OUT", "1")
    cp = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cp.returncode != 0 and "az login" in cp.stderr and "Traceback" not in cp.stderr
