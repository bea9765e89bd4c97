"""Soak test: several clients drive `steel-defect serve` on loopback with valid and hostile traffic.

Run: ``.venv/bin/python bench/soak.py [--seconds 300] [--clients 4] [--checkpoints SEG.pth CLS.pth]``
(checkpoints as in bench/inference.py: the demo's when present, else untrained full-size models).

The server runs as its own process (``steel-defect serve --keep 8 --max-file-mb 1``, so results
are evicted and the request-size limit is 33 MB). Each client sends every kind of request once,
then draws them at random:
real-size synthetic frames, a frame beside a corrupt file, corrupt files, decompression bombs
(tests/bombs.py), a file over the size limit, a body over the request limit (streamed, and
declared in Content-Length), 33 files, a frame trickled over 2 s, and re-thresholding of the
ids it got earlier (most of them evicted by then). One more client stalls mid-body until the
server's deadline. Every answer must be JSON with the status the API documents for its kind.

Targets (exit status 1 when one is missed): no 5xx, no dropped connection, every answer JSON
with its documented status, server RSS at the end <= RSS after warm-up + 10%. Both RSS figures
are taken idle (after warm-up the clients wait until the requests in flight are answered), so
what was in flight at that instant does not decide the comparison. ``--json FILE`` writes the
figures (tests/test_soak.py runs a short form).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import httpx
import numpy as np
import psutil
from benchdata import REPO, bench_checkpoints

from steel_defect.data.synth import generate_frame

MAX_FILE_MB = 1  # so the body limit (32 files + 1 MB) is 33 MB
KEEP = 8  # results the server keeps: re-thresholding older ids finds them evicted
# kind: (weight, statuses the API documents for it)
KINDS = {
    "frames": (0.30, {200}),
    "frame_and_corrupt": (0.08, {200}),
    "corrupt": (0.10, {415, 422}),
    "bomb": (0.10, {422}),
    "oversize_file": (0.05, {413}),
    "oversize_body": (0.04, {413}),
    "oversize_declared": (0.04, {413}),
    "33_files": (0.05, {413}),
    "rethreshold": (0.19, {200, 404}),  # 404 once evicted
    "slow_client": (0.05, {200}),
}
STALLED = {408}


def _load_bombs():
    """tests/bombs.py, the bombs the test suite refuses (a file, not an installed module)."""
    spec = importlib.util.spec_from_file_location("bombs", REPO / "tests" / "bombs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def frames(n: int, seed: int = 0) -> list[bytes]:
    """``n`` synthetic 1600x256 JPEGs (every other one defect-free), as uploaded bytes."""
    rng = np.random.default_rng(seed)
    found = []
    for i in range(n):
        image, _ = generate_frame(rng, defect_free=i % 2 == 0)
        found.append(
            cv2.imencode(".jpg", np.dstack([image] * 3), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        )
    return found


def multipart(files: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    """(boundary, body) of a multipart/form-data upload of ``files`` as the ``files`` field."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    return boundary, b"".join(parts) + f"--{boundary}--\r\n".encode()


def raw_post(
    port: int,
    body: bytes,
    boundary: str,
    *,
    declared: int | None = None,
    chunk: int = 0,
    pause: float = 0.0,
    stop_after: int | None = None,
    timeout: float = 300,
) -> tuple[int, bytes]:
    """POST /api/predict over a bare socket: trickled (``chunk`` bytes every ``pause`` s), cut
    off after ``stop_after`` bytes (then wait for the answer), or with a false Content-Length."""
    length = len(body) if declared is None else declared
    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        sent = body[:stop_after] if stop_after is not None else body
        if declared is None or declared == len(body):
            step = chunk or len(sent) or 1
            for start in range(0, len(sent), step):
                sock.sendall(sent[start : start + step])
                if pause:
                    time.sleep(pause)
        answer = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status_line, _, rest = answer.partition(b"\r\n")
    if not status_line.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"no HTTP answer: {answer[:100]!r}")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in headers.lower():
        raise ConnectionError("chunked answer; expected a Content-Length JSON body")
    return int(status_line.split()[1]), payload


class Soak:
    def __init__(self, port: int, valid: list[bytes], seed: int):
        self.port, self.valid, self.seed = port, valid, seed
        self.url = f"http://127.0.0.1:{port}"
        bombs = _load_bombs()
        self.bombs = [(f"bomb.{kind.lower()}", bombs.bomb(kind)) for kind in bombs.BUILDERS]
        self.records: list[tuple[str, int | None, float, str]] = []  # kind, status, seconds, problem
        self.lock = threading.Lock()
        self.open = threading.Event()  # cleared: clients finish their request and wait
        self.open.set()
        self.busy = 0  # client requests in flight
        self.oversize_file = np.random.default_rng(seed).bytes(int(MAX_FILE_MB * 2**20) + 4096)

    def record(self, kind: str, status: int | None, seconds: float, problem: str = "") -> None:
        with self.lock:
            self.records.append((kind, status, seconds, problem))

    def _frames(self, rng, k: int) -> list[tuple[str, bytes]]:
        picks = rng.choice(len(self.valid), size=k, replace=False)
        return [(f"frame{i}.jpg", self.valid[i]) for i in picks]

    def _corrupt(self, rng) -> tuple[str, bytes]:
        frame = self.valid[int(rng.integers(len(self.valid)))]
        return [
            ("truncated.jpg", frame[: len(frame) // 3]),
            ("noise.jpg", rng.bytes(5000)),
            ("empty.png", b""),
        ][int(rng.integers(3))]

    def request(self, client: httpx.Client, kind: str, rng, ids: list[str]):
        """One request of ``kind``; returns (status, JSON body)."""
        if kind in ("slow_client", "oversize_declared"):
            boundary, body = multipart(self._frames(rng, 1))
            if kind == "slow_client":  # about 2 s to upload one frame
                status, payload = raw_post(self.port, body, boundary, chunk=len(body) // 40 + 1, pause=0.05)
            else:  # 1 GB announced, nothing sent: answered from the header
                status, payload = raw_post(self.port, b"", boundary, declared=2**30)
            return status, json.loads(payload)
        if kind == "rethreshold":
            rid = ids[int(rng.integers(len(ids)))] if ids and rng.random() < 0.8 else uuid.uuid4().hex
            body = {"classes": {str(c): {"threshold": float(rng.uniform(0.1, 0.9))} for c in range(1, 5)}}
            response = client.post(f"/api/results/{rid}/postprocess", json=body)
        elif kind == "oversize_body":  # streamed (chunked), no Content-Length: cut off when counted
            boundary, head = multipart([("huge.jpg", b"")])
            block = bytes(2**20)

            def stream():  # a well-formed part whose file never ends
                yield head[: head.index(b"\r\n\r\n") + 4]
                for _ in range(34 * MAX_FILE_MB):
                    yield block

            response = client.post(
                "/api/predict",
                content=stream(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
        else:
            files = {
                "frames": lambda: self._frames(rng, int(rng.integers(1, 3))),
                "frame_and_corrupt": lambda: [*self._frames(rng, 1), self._corrupt(rng)],
                "corrupt": lambda: [self._corrupt(rng)],
                "bomb": lambda: [self.bombs[int(rng.integers(len(self.bombs)))]],
                "oversize_file": lambda: [("big.jpg", self.oversize_file)],
                "33_files": lambda: [("tiny.jpg", b"x")] * 33,
            }[kind]()
            response = client.post("/api/predict", files=[("files", f) for f in files])
        if not response.headers.get("content-type", "").startswith("application/json"):
            raise ValueError(f"answer is {response.headers.get('content-type')}, not JSON")
        return response.status_code, response.json()

    def client(self, index: int, deadline: float) -> None:
        rng = np.random.default_rng([self.seed, index])
        names = list(KINDS)
        weights = np.array([KINDS[k][0] for k in names])
        ids: list[str] = []
        first_round = names[index % len(names) :] + names[: index % len(names)]  # every kind once
        with httpx.Client(base_url=self.url, timeout=300) as client:
            while time.monotonic() < deadline:
                self.open.wait()
                if first_round:
                    kind = first_round.pop(0)
                else:
                    kind = names[int(rng.choice(len(names), p=weights / weights.sum()))]
                start = time.perf_counter()
                with self.lock:
                    self.busy += 1
                try:
                    status, answer = self.request(client, kind, rng, ids)
                except (httpx.TransportError, OSError) as err:  # dropped: reset, refused, no answer
                    self.record(kind, None, time.perf_counter() - start, f"dropped: {err!r}"[:200])
                    continue
                except ValueError as err:  # an answer that is not JSON
                    self.record(kind, -1, time.perf_counter() - start, str(err)[:200])
                    continue
                finally:
                    with self.lock:
                        self.busy -= 1
                problem = "" if status in KINDS[kind][1] else f"status {status}: {str(answer)[:150]}"
                if kind in ("frames", "frame_and_corrupt") and status == 200:
                    entries = answer.get("images", [])
                    ids.extend(e["id"] for e in entries if "id" in e)
                    errors = [e for e in entries if "error" in e]
                    if kind == "frame_and_corrupt" and len(errors) != 1:
                        problem = f"expected one error entry, got {errors}"
                self.record(kind, status, time.perf_counter() - start, problem)

    def staller(self, deadline: float, timeout: float) -> None:
        """Sends half a frame's upload, then nothing: the server must answer 408 at its deadline."""
        rng = np.random.default_rng([self.seed, 999])
        while True:  # one stall at least; another only when it ends before the deadline
            boundary, body = multipart(self._frames(rng, 1))
            start = time.perf_counter()
            try:
                status, payload = raw_post(
                    self.port, body, boundary, stop_after=len(body) // 2, timeout=timeout + 60
                )
                json.loads(payload)
            except (OSError, ValueError) as err:
                self.record("stalled_client", None, time.perf_counter() - start, f"dropped: {err!r}"[:200])
                return
            problem = "" if status in STALLED else f"status {status}"
            self.record("stalled_client", status, time.perf_counter() - start, problem)
            if time.monotonic() + timeout > deadline:
                return


def start_server(checkpoints: list[str], timeout: float, log_path: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [
        sys.executable, "-m", "steel_defect.cli", "serve", "--port", str(port),
        "--untuned", "--checkpoints", *checkpoints,
        "--keep", str(KEEP), "--max-file-mb", str(MAX_FILE_MB), "--timeout", str(timeout),
    ]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return server, port
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.kill()
    raise RuntimeError("the server did not answer /api/health within 180 s")


def idle_rss(soak: Soak, pid: int) -> float:
    """The server's RSS once the clients' requests in flight are answered (they wait meanwhile)."""
    soak.open.clear()
    try:
        while soak.busy:
            time.sleep(0.1)
        time.sleep(1)
        return rss_mb(pid)
    finally:
        soak.open.set()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarise(records, rss: dict, seconds: float) -> dict:
    by_kind: dict[str, Counter] = defaultdict(Counter)
    latency: dict[str, list[float]] = defaultdict(list)
    for kind, status, took, _ in records:
        by_kind[kind][str(status)] += 1
        latency[kind].append(took)
    everything = [took for kind, _, took, _ in records if kind != "stalled_client"]
    problems = [f"{kind}: {problem}" for kind, _, _, problem in records if problem]
    server_errors = sum(1 for _, status, _, _ in records if status is not None and status >= 500)
    dropped = sum(1 for _, status, _, _ in records if status is None)
    growth = rss["end"] / rss["warm"] - 1
    return {
        "seconds": round(seconds, 1),
        "requests": len(records),
        "statuses": {kind: dict(counts) for kind, counts in sorted(by_kind.items())},
        "p50_s": round(percentile(everything, 50), 3),
        "p95_s": round(percentile(everything, 95), 3),
        "frames_p50_s": round(percentile(latency["frames"], 50), 3),
        "frames_p95_s": round(percentile(latency["frames"], 95), 3),
        "rss_mb": {k: round(v, 1) for k, v in rss.items()},
        "rss_growth_after_warmup": round(growth, 4),
        "server_errors": server_errors,
        "dropped": dropped,
        "problems": problems[:20],
        "targets_met": not problems and server_errors == 0 and dropped == 0 and growth <= 0.10,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300, help="how long the clients send")
    parser.add_argument("--clients", type=int, default=4, help="client threads (plus one staller)")
    parser.add_argument("--warmup", type=float, help="seconds before the warm RSS (default 20%%, >= 10 s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="the server's request deadline, s")
    parser.add_argument("--checkpoints", nargs="*")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else max(10.0, 0.2 * args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = bench_checkpoints(Path(tmp), args.checkpoints)
        server, port = start_server(checkpoints, args.timeout, Path(tmp) / "server.log")
        try:
            rss = {"start": rss_mb(server.pid)}
            fds = {"start": psutil.Process(server.pid).num_fds()}
            soak = Soak(port, frames(12, args.seed), args.seed)
            begin = time.monotonic()
            deadline = begin + args.seconds
            threads = [threading.Thread(target=soak.client, args=(k, deadline)) for k in range(args.clients)]
            threads.append(threading.Thread(target=soak.staller, args=(deadline, args.timeout)))
            for thread in threads:
                thread.start()
            timeline = []  # (seconds, MB) every 5 s
            while any(t.is_alive() for t in threads):
                time.sleep(0.5)
                now, current = time.monotonic() - begin, rss_mb(server.pid)
                if not timeline or now - timeline[-1][0] >= 5:
                    timeline.append((round(now), round(current)))
                if "warm" not in rss and now >= warmup:
                    rss["warm"] = idle_rss(soak, server.pid)  # compared idle to idle with the end
                    fds["warm"] = psutil.Process(server.pid).num_fds()
            time.sleep(1)
            rss["end"] = rss_mb(server.pid)
            fds["end"] = psutil.Process(server.pid).num_fds()  # open files and sockets: a leak shows
            rss.setdefault("warm", rss["end"])
            rss["peak"] = max([rss["end"], *(mb for _, mb in timeline)])
            alive = server.poll() is None
        finally:
            server.terminate()
            server.wait(30)
        result = summarise(soak.records, rss, time.monotonic() - begin)
        result.update(
            open_files=fds,
            checkpoints=checkpoints,
            clients=args.clients,
            server_alive=alive,
            rss_timeline=timeline,
        )
        result["targets_met"] = result["targets_met"] and alive
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if result["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
