"""``python -m clinlm serve --run <run> [--run <run2> ...]``: an HTTP API and a web page.

Every model is loaded ONCE at start (:class:`clinlm.predictor.Predictor`); one uvicorn process, and
each model behind its own lock, so two requests never run one torch model at the same time.

Endpoints (JSON; errors are ``{"error": message, "row": n, "field": name}``, never a traceback
and never a 500 for anything a client sends):

* ``GET /health`` -> ``{"status": "ok", "runs": [...]}``
* ``GET /api/runs`` -> each run's task, method, question and input fields
* ``POST /predict`` with ``{"run": name, "rows": [{field: value, ...}, ...]}`` or
  ``{"run": name, "fields": {...}}`` -> ``{"run", "task", "method", "predictions": [...]}``:
  ONE entry per row, in order, each as :func:`clinlm.predictor.answers` -- ``"status": "ok"`` with
  the prediction, or ``"status": "refused"`` with ``error`` and ``field`` (a bad value, an
  unknown field, a row that is not an object, a row the training filters would leave out).
  Status 200 when at least one row is answered; 422 when every row is refused (the same
  body, plus the first refusal's ``error`` / ``row`` / ``field`` at the top). The request
  itself: not JSON, nested too deep, wrong shape: 400; unknown run: 404; more than
  ``--max-rows`` rows or a body over 1 MiB: 413.
* ``GET /`` -> the page (``serve_page.html``: inline JS/CSS, nothing fetched from outside).
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations
# (``Request``, imported inside create_app) at definition time
import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from clinlm.predictor import AskError, Predictor

log = logging.getLogger(__name__)

MAX_ROWS = 256            # rows per request: a bigger batch belongs to `clinlm predict`
MAX_BODY = 1 << 20        # bytes per request body
PAGE = Path(__file__).with_name("serve_page.html")


def parse_request(body: bytes, predictors: dict[str, Predictor],
                  max_rows: int = MAX_ROWS) -> tuple[Predictor, list[dict[str, Any]]]:
    """A /predict body -> (its predictor, its records); :class:`AskError` names the problem."""
    if len(body) > MAX_BODY:
        raise AskError(f"request body over {MAX_BODY} bytes", status=413)
    try:
        req = json.loads(body)
    except RecursionError:
        raise AskError("body is not usable JSON: nested too deeply", status=400) from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError; a 5000-digit number
        raise AskError(f"body is not JSON: {e}", status=400) from None
    if not isinstance(req, dict):
        raise AskError('body must be a JSON object {"run": ..., "rows": [...]}', status=400)
    extra = sorted(set(req) - {"run", "rows", "fields"})
    if extra:
        raise AskError(f"unknown key(s) {extra}; expected run and rows (or fields)",
                       field=extra[0], status=400)
    run = req.get("run")
    if not isinstance(run, str):
        raise AskError(f'"run" must name a loaded run: {sorted(predictors)}', field="run",
                       status=400)
    if run not in predictors:
        raise AskError(f"run {run!r} is not loaded here; loaded: {sorted(predictors)}",
                       field="run", status=404)
    if ("rows" in req) == ("fields" in req):
        raise AskError('give either "rows": [{...}, ...] or "fields": {...}', status=400)
    rows = req["rows"] if "rows" in req else [req["fields"]]
    if not isinstance(rows, list):
        raise AskError('"rows" must be a list of objects', field="rows", status=400)
    if not rows:
        raise AskError('"rows" is empty: give at least one row', field="rows", status=400)
    if len(rows) > max_rows:
        raise AskError(f"{len(rows)} rows; at most {max_rows} per request (use `python -m "
                       f"clinlm predict` for a file)", field="rows", status=413)
    return predictors[run], rows  # a row that is not an object is refused in place


async def read_body(request: Any, limit: int = MAX_BODY) -> bytes:
    """The request body, read no further than ``limit`` + 1 bytes (a 413 never buffers a
    huge upload: the declared length is checked first, then the stream as it arrives)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise AskError(f"request body over {limit} bytes", status=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise AskError(f"request body over {limit} bytes", status=413)
    return bytes(body)


def json_response_class() -> Any:
    """Starlette's JSONResponse, rendering any text a client sent (a lone surrogate) as an
    escape instead of failing, and NaN as null: an answer never becomes a 500."""
    from starlette.responses import JSONResponse

    class SafeJSONResponse(JSONResponse):
        def render(self, content: Any) -> bytes:
            from clinlm.io import _strict
            content = _strict(content)
            try:
                return super().render(content)
            except UnicodeEncodeError:
                return json.dumps(content, ensure_ascii=True, allow_nan=False,
                                  separators=(",", ":")).encode("ascii")

    return SafeJSONResponse


def create_app(predictors: dict[str, Predictor], max_rows: int = MAX_ROWS) -> Any:
    """The FastAPI app over already loaded predictors."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    JSONResponse = json_response_class()  # noqa: N806 (a class)
    app = FastAPI(title="clinlm", docs_url=None, redoc_url=None, openapi_url=None,
                  default_response_class=JSONResponse)
    page = PAGE.read_text(encoding="utf-8")

    @app.exception_handler(AskError)
    async def _ask_error(_: Request, e: AskError) -> JSONResponse:
        return JSONResponse(e.to_dict(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail), "row": None, "field": None},
                            status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = (e.errors() or [{}])[0]
        return JSONResponse({"error": f"{first.get('msg', 'invalid request')}: "
                                      f"{'.'.join(map(str, first.get('loc', ())))}",
                             "row": None, "field": None}, status_code=422)

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> JSONResponse:
        # logged here with its traceback; the client gets the type only
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(e).__name__}); see the server log",
                             "row": None, "field": None}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "runs": sorted(predictors)}

    @app.get("/api/runs")
    async def runs() -> dict[str, Any]:
        return {"runs": [p.describe() for p in predictors.values()], "max_rows": max_rows}

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        p, rows = parse_request(await read_body(request), predictors, max_rows)
        # torch work off the event loop; the predictor's lock serialises one model
        preds = await run_in_threadpool(p.predict, rows)
        body = {"run": p.name, "task": p.run.task, "method": p.method, "predictions": preds}
        if any(a["status"] == "ok" for a in preds):
            return JSONResponse(body)
        first = preds[0]  # every row refused: 422, the first refusal named at the top
        return JSONResponse({"error": first["error"], "row": first["row"],
                             "field": first["field"], **body}, status_code=422)

    return app


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m clinlm serve",
                                 description="HTTP API and web page for trained runs.")
    ap.add_argument("--run", action="append", required=True,
                    help="runs.<method>.<name> to load (repeat for several)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--max-rows", type=int, default=MAX_ROWS, help="rows per /predict request")
    return ap


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``python -m clinlm serve``): load every run, then serve until stopped."""
    import time

    import uvicorn

    from clinlm.paths import setup_logging
    from clinlm.predict import quiet_libraries

    args = build_parser().parse_args(argv)
    setup_logging()
    quiet_libraries()  # the log keeps this project's lines and every error
    predictors: dict[str, Predictor] = {}
    for name in dict.fromkeys(args.run):  # once each, in order
        t0 = time.perf_counter()
        try:
            predictors[name] = Predictor(name, params_path=args.params)
            predictors[name].warm_up()
        except AskError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        log.info("loaded and warmed up %s in %.1f s", name, time.perf_counter() - t0)
    app = create_app(predictors, args.max_rows)
    log.info("serving %s on http://%s:%d/", ", ".join(predictors), args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
