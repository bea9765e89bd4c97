"""Access control and browser-facing headers of the web app: a token off loopback, the login
cookie, constant-time comparison, no CORS, nosniff and the page's CSP."""

from __future__ import annotations

import hmac

import pytest
from fastapi.testclient import TestClient

from steel_defect.cli import main
from steel_defect.inference.predictor import Predictor
from steel_defect.webapp import security
from steel_defect.webapp.app import create_app
from steel_defect.webapp.examples import example_images
from steel_defect.webapp.security import COOKIE, AccessError, access_token, is_loopback
from steel_defect.webapp.service import InferenceService
from tests.conftest import random_checkpoints

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    paths = random_checkpoints(tmp_path_factory.mktemp("sec"), exported=True)
    return InferenceService(Predictor([paths["seg"]]), keep=4)


@pytest.fixture
def guarded(service):
    return TestClient(create_app(service, token=TOKEN))


def _upload(client, **kwargs):
    name, data = next(iter(example_images().items()))
    return client.post("/api/predict", files=[("files", (name, data))], **kwargs)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        *[("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True)],
        *[("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("steel.example.com", False)],
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_a_token_is_required_off_loopback_unless_no_auth():
    assert access_token("127.0.0.1", None, False, env={}) is None
    with pytest.raises(AccessError, match=r"--host 0\.0\.0\.0 exposes .*STEEL_DEFECT_TOKEN.*--no-auth"):
        access_token("0.0.0.0", None, False, env={})
    assert access_token("0.0.0.0", None, True, env={}) is None
    assert access_token("0.0.0.0", None, False, env={"STEEL_DEFECT_TOKEN": TOKEN}) == TOKEN
    assert access_token("0.0.0.0", TOKEN, False, env={"STEEL_DEFECT_TOKEN": "x" * 20}) == TOKEN
    assert access_token("127.0.0.1", TOKEN, False, env={}) == TOKEN  # a token given is always used
    with pytest.raises(AccessError, match="has 5 characters; use at least 16"):
        access_token("0.0.0.0", "short", False, env={})
    with pytest.raises(AccessError, match="contradict"):
        access_token("0.0.0.0", TOKEN, True, env={})


def test_serve_refuses_an_open_network_host_before_loading_a_model(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STEEL_DEFECT_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--demo-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 exposes the model to the network" in err
    assert "make demo" not in err  # refused before looking for a model


def test_the_api_needs_the_token_but_health_and_the_page_do_not(guarded):
    for path in ("/api/model", "/api/examples"):
        response = guarded.get(path)
        assert response.status_code == 401, path
        assert "needs an access token" in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert _upload(guarded).status_code == 401
    assert guarded.get("/api/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert guarded.get("/api/model", headers={"Authorization": TOKEN}).status_code == 401  # no scheme
    assert guarded.get("/api/model", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    for path in ("/api/health", "/", "/static/predict.js"):
        assert guarded.get(path).status_code == 200, path


def test_login_sets_a_strict_http_only_cookie_that_opens_the_api(guarded):
    wrong = guarded.post("/api/login", json={"token": "not-the-token-at-all"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert guarded.post("/api/login", json={"token": TOKEN, "x": 1}).status_code == 422
    response = guarded.post("/api/login", json={"token": TOKEN})
    assert response.status_code == 204
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert TOKEN not in cookie  # the cookie holds a value derived from the token
    # the client now sends the cookie: predictions, the frame image and the model answer
    result = _upload(guarded).json()["images"][0]
    assert guarded.get(f"/api/results/{result['id']}/image.jpg").status_code == 200
    assert guarded.get("/api/model").status_code == 200
    guarded.cookies.set(COOKIE, "0" * 64)
    assert guarded.get("/api/model").status_code == 401


def test_tokens_are_compared_in_constant_time(guarded, monkeypatch):
    calls = []
    compare = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    guarded.get("/api/model", headers={"Authorization": "Bearer guess"})
    assert (b"guess", TOKEN.encode()) in calls


def test_no_cors_and_security_headers(service, guarded):
    client = TestClient(create_app(service))  # loopback default: no token
    evil = {"Origin": "https://evil.example"}
    response = client.get("/api/model", headers=evil)
    assert response.status_code == 200
    assert not any(h.startswith("access-control-") for h in response.headers)
    preflight = client.options("/api/predict", headers={**evil, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code >= 400
    assert "access-control-allow-origin" not in preflight.headers
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    for response in (page, client.get("/api/model"), guarded.get("/api/model"), client.get("/docs")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    # FastAPI's Swagger page loads its scripts from a CDN: the page's policy would break it
    assert "content-security-policy" not in client.get("/docs").headers
    # without a token the login is a no-op and sets nothing
    login = client.post("/api/login", json={"token": "anything"})
    assert login.status_code == 204 and "set-cookie" not in login.headers


def test_the_token_is_checked_on_the_routed_path_under_a_root_path(service):
    """Behind a proxy mount (``uvicorn --root-path /steel``) the raw path is /steel/api/...:
    the check must see the path the router sees, or the API would be open."""
    client = TestClient(create_app(service, token=TOKEN), root_path="/steel")
    assert client.get("/steel/api/model").status_code == 401
    assert client.get("/steel/api/model", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/steel/api/health").status_code == 200  # the liveness probe stays open
    assert _upload(client).status_code == 401


def test_a_unicode_file_name_downloads_its_mask_png(service):
    client = TestClient(create_app(service))
    data = next(iter(example_images().values()))
    result = client.post("/api/predict", files=[("files", ("缺陷.jpg", data))]).json()["images"][0]
    assert result["file_name"] == "缺陷.jpg"
    response = client.post(f"/api/results/{result['id']}/mask.png")
    assert response.status_code == 200 and response.content[:8] == b"\x89PNG\r\n\x1a\n"
    disposition = response.headers["content-disposition"]
    assert disposition == "attachment; filename=\"___mask.png\"; filename*=UTF-8''%E7%BC%BA%E9%99%B7_mask.png"
