"""What every page's app shares: limits, the token check, security headers, JSON errors, login.

    app = new_app("what the app is for", Limits(timeout_s=30), token)   # then add its routes

The prediction app (:mod:`.app`), the labelling app (:mod:`.labelling`) and the line's dashboard
(:mod:`.dashboard`) all start from :func:`new_app`, so they answer errors, limits and tokens
alike. This module imports none of them: the apps may import each other's routes without a cycle.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from steel_defect.errors import UserError
from steel_defect.webapp.limits import BodySizeLimit, RequestGuard
from steel_defect.webapp.security import COOKIE, SecurityHeaders, TokenAuth, session_value

STATIC = Path(__file__).with_name("static")
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "TIFF": "image/tiff"}


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 10 * 2**20
    max_files: int = 32
    max_request_bytes: int = 64 * 2**20
    timeout_s: float = 120.0  # a request not answered by then gets 408 (slow body) or 503
    max_queued: int = 8  # predictions in progress, the running one included; more get 503

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise UserError(f"the request timeout must be above 0 s, got {self.timeout_s}")
        if self.max_queued < 1:
            raise UserError(f"max_queued must be at least 1 prediction, got {self.max_queued}")


def attachment(file_name: str) -> str:
    """A Content-Disposition that any file name survives (RFC 6266): an ASCII ``filename`` for old
    clients and the UTF-8 ``filename*`` that browsers prefer (``缺陷_mask.png``)."""
    fallback = file_name.encode("ascii", "replace").decode("ascii").replace("?", "_").replace('"', "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(file_name, safe='')}"


def error_response(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status)


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(max_length=1024, description="the server's access token")


def new_app(summary: str, limits: Limits, token: str | None, queued_paths=("/api/predict",)) -> FastAPI:
    """A FastAPI app with the limits, the token check, the security headers, JSON errors and
    ``/api/login``: what the prediction and the labelling apps share."""
    app = FastAPI(title="steel-defect", summary=summary, version="1.0")
    # The last added runs first: headers on every answer, then the token, then the deadline
    # and queue, then the body size.
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_request_bytes)
    app.add_middleware(
        RequestGuard, timeout_s=limits.timeout_s, max_queued=limits.max_queued, queued_paths=queued_paths
    )
    if token is not None:
        app.add_middleware(TokenAuth, token=token)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return error_response(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception):
        # Not the user's to fix: Starlette raises it again after this answer, so the server logs
        # its traceback; the page still gets the JSON it reads every error from.
        return error_response(
            500, f"internal error ({type(err).__name__}); the server's log has its traceback"
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        errors = err.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            return error_response(400, "request body is not valid JSON")
        problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in errors]
        hint = " (send images as multipart form field 'files')" if request.url.path == "/api/predict" else ""
        return error_response(422, "; ".join(problems) + hint)

    @app.post("/api/login", status_code=204, response_class=Response)
    def login(body: Login) -> Response:
        """Exchange the access token for a session cookie (what the page does once)."""
        if token is None:
            return Response(status_code=204)  # nothing to log in to
        if not hmac.compare_digest(body.token.encode(), token.encode()):
            raise HTTPException(401, "wrong access token; ask whoever started the server for it")
        response = Response(status_code=204)
        response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict", path="/")
        return response

    return app
