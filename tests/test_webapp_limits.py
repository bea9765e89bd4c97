"""Resource limits of the web app: request deadline (408 for a stalled body, 503 for slow work),
a bound on queued predictions (503 + Retry-After) and the result store's bound in MB."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from steel_defect.inference.predictor import Predictor
from steel_defect.webapp.app import Limits, create_app
from steel_defect.webapp.examples import example_images
from steel_defect.webapp.limits import RequestGuard
from steel_defect.webapp.service import InferenceService, unique_names
from tests.conftest import random_checkpoints


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return Predictor([random_checkpoints(tmp_path_factory.mktemp("lim"), exported=True)["seg"]])


def _upload(client, n=1):
    items = list(example_images().items())[:n]
    return client.post("/api/predict", files=[("files", item) for item in items])


def test_slow_work_gets_503_with_retry_after_and_the_server_goes_on(predictor, monkeypatch):
    service = InferenceService(predictor)
    real, finished = service.predict, threading.Event()

    def slow(items):
        time.sleep(1.5)
        results = real(items)
        finished.set()
        return results

    monkeypatch.setattr(service, "predict", slow)
    client = TestClient(create_app(service, Limits(timeout_s=0.5)))
    t0 = time.monotonic()
    response = _upload(client)
    assert time.monotonic() - t0 < 1.4  # answered at the deadline, not when the work ended
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["detail"] == "not answered within 0.5 s; send fewer files per request"
    assert not finished.is_set()
    # the abandoned batch still ends in its thread (its result stored), and the server goes on
    assert finished.wait(60)
    assert len(service._store) == 1
    assert client.get("/api/model").status_code == 200


def test_a_stalled_request_body_gets_408():
    async def app(scope, receive, send):
        await receive()  # waits for a body that never comes
        raise AssertionError("unreachable")

    async def stalled():
        await asyncio.sleep(3600)

    sent = []

    async def send(message):
        sent.append(message)

    guard = RequestGuard(app, timeout_s=0.2, max_queued=1)
    asyncio.run(guard({"type": "http", "path": "/api/predict", "headers": []}, stalled, send))
    assert sent[0]["status"] == 408
    assert b"request body not received within 0.2 s" in sent[1]["body"]
    assert guard.in_progress == 0  # the cancelled request left the queue


def test_predictions_beyond_the_queue_bound_get_503_at_once(predictor, monkeypatch):
    service = InferenceService(predictor)
    real, entered, release = service.predict, threading.Event(), threading.Event()

    def held(items):
        entered.set()
        release.wait(30)
        return real(items)

    monkeypatch.setattr(service, "predict", held)
    client = TestClient(create_app(service, Limits(max_queued=1)))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_upload, client)
        assert entered.wait(30)
        t0 = time.monotonic()
        busy = _upload(client)
        assert time.monotonic() - t0 < 5
        assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
        assert "the server is busy (1 predictions in progress)" in busy.json()["detail"]
        # other routes are not queued behind predictions
        assert client.get("/api/health").status_code == 200
        release.set()
        assert first.result(60).status_code == 200
    assert _upload(client).status_code == 200  # the slot is free again


def test_the_result_store_is_bounded_in_megabytes(predictor):
    service = InferenceService(predictor, keep=100, keep_mb=4)  # about two frames of 1.6 MB + preview
    client = TestClient(create_app(service))
    ids = [_upload(client).json()["images"][0]["id"] for _ in range(4)]
    assert 3.2 < service.stored_mb <= 4
    assert [client.get(f"/api/results/{i}/image.jpg").status_code for i in ids] == [404, 404, 200, 200]
    detail = client.post(f"/api/results/{ids[0]}/postprocess").json()["detail"]
    assert "at most 4 MB" in detail and "upload the image again" in detail


def test_limits_are_checked_and_reported(predictor):
    with pytest.raises(ValueError, match="timeout must be above 0"):
        Limits(timeout_s=0)
    with pytest.raises(ValueError, match="max_queued must be at least 1"):
        Limits(max_queued=0)
    with pytest.raises(ValueError, match="keep_mb must be above 0"):
        InferenceService(predictor, keep_mb=0)
    limits = TestClient(create_app(InferenceService(predictor))).get("/api/model").json()["limits"]
    assert (limits["timeout_s"], limits["max_queued"]) == (120.0, 8)


def test_a_streamed_body_over_the_limit_is_413_even_inside_form_parsing(predictor):
    # FastAPI's multipart parser turns any error into 400; the limit must still answer 413
    client = TestClient(create_app(InferenceService(predictor), Limits(max_request_bytes=2**20)))
    head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n\r\n'

    def stream():  # chunked: no Content-Length to refuse up front
        yield head
        for _ in range(3):
            yield bytes(2**19)

    response = client.post(
        "/api/predict", content=stream(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 413 and "over the limit of 1 MB" in response.json()["detail"]


def test_a_timed_out_prediction_holds_its_queue_slot_until_its_thread_ends(predictor, monkeypatch):
    service = InferenceService(predictor)
    real, entered, release, done = service.predict, threading.Event(), threading.Event(), threading.Event()

    def held(items):
        entered.set()
        release.wait(30)
        results = real(items)
        done.set()
        return results

    monkeypatch.setattr(service, "predict", held)
    with TestClient(create_app(service, Limits(timeout_s=0.5, max_queued=1))) as client:
        first = _upload(client)
        assert first.status_code == 503 and "not answered within 0.5 s" in first.json()["detail"]
        assert entered.is_set() and not done.is_set()
        # its thread still holds the network: the next prediction is turned away, not queued behind it
        busy = _upload(client)
        assert (
            busy.status_code == 503
            and "the server is busy (1 predictions in progress)" in busy.json()["detail"]
        )
        release.set()
        assert done.wait(60)
        statuses = []
        for _ in range(50):  # the event loop notes the finished task before or after this request
            statuses.append(_upload(client).status_code)
            if statuses[-1] == 200:
                break
        assert statuses[-1] == 200 and set(statuses) <= {200, 503}


def test_submission_ids_are_capped_repeats_included(predictor):
    service = InferenceService(predictor, keep=8)
    client = TestClient(create_app(service))
    result = _upload(client).json()["images"][0]
    response = client.post("/api/submission", json={"ids": [result["id"]] * 10_000})
    assert response.status_code == 413
    assert (
        "10000 ids in one request (repeats included); the server keeps at most 8" in response.json()["detail"]
    )
    response = client.post("/api/submission", json={"ids": [result["id"]] * 8})
    assert response.status_code == 200
    stem, suffix = result["file_name"].rsplit(".", 1)
    names = [line.rsplit("_", 1)[0] for line in response.text.splitlines()[1::4]]
    assert names == [result["file_name"], *(f"{stem}-{n}.{suffix}" for n in range(2, 9))]


def test_unique_names_are_linear_and_never_collide():
    assert unique_names(["a.jpg", "a-2.jpg", "a.jpg", "b", "b"]) == [
        "a.jpg",
        "a-2.jpg",
        "a-3.jpg",
        "b",
        "b-2",
    ]
    many = unique_names(["x.jpg"] * 20_000)  # the old quadratic scan took minutes here
    assert len(set(many)) == 20_000 and many[-1] == "x-20000.jpg"
