"""Other web sites in the same browser against a real ``defacer serve`` (headless Chromium, real DNS names).

Chromium resolves two made-up host names to 127.0.0.1 (``--host-resolver-rules``): ``other-site.test``
serves a page of another origin (cross-site requests, CSRF), and ``rebound.test`` plays a DNS-rebinding
attacker's name that now points at the loopback server.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_helpers import CHROMIUM, CHROMIUM_ARGS, Server

pytestmark = pytest.mark.browser

OTHER_SITE = "other-site.test"
REBOUND = "rebound.test"
OTHER_PAGE = b"<!doctype html><title>another site</title><p>another site</p>"


@pytest.fixture(scope="module")
def resolving_browser() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install chromium chromium-driver)")
    rules = f"--host-resolver-rules=MAP {OTHER_SITE} 127.0.0.1, MAP {REBOUND} 127.0.0.1"
    with playwright_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, rules])
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def other_site() -> Iterator[str]:
    """A plain page on another origin (another port, another host name)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(OTHER_PAGE)))
            self.end_headers()
            self.wfile.write(OTHER_PAGE)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://{OTHER_SITE}:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def work_areas(server: Server) -> list[Path]:
    """The session folders the server has made (one per POST /api/sessions that it answered)."""
    return [p for root in server.work_dir.glob("defacer-web-*") for p in root.iterdir() if p.is_dir()]


#: What a hostile page tries: start work (plain fetch, form post, beacon) and read the server's answers.
ATTEMPTS = """async (api) => {
  const results = {};
  for (const [name, init] of [["no-cors POST", {method: "POST", mode: "no-cors"}],
                              ["text POST", {method: "POST", mode: "no-cors", body: "x",
                                             headers: {"Content-Type": "text/plain"}}]]) {
    try { await fetch(api + "api/sessions", init); results[name] = "sent"; }
    catch (err) { results[name] = "refused by the browser"; }
  }
  results.beacon = navigator.sendBeacon(api + "api/sessions", "x") ? "queued" : "refused by the browser";
  const frame = document.createElement("iframe"); frame.name = "sink"; document.body.append(frame);
  const form = document.createElement("form");
  form.method = "POST"; form.action = api + "api/sessions"; form.target = "sink"; form.enctype = "text/plain";
  document.body.append(form); form.submit();
  await new Promise((resolve) => { frame.onload = resolve; setTimeout(resolve, 5000); });
  try { const answer = await fetch(api + "api/config"); results.read = "read: " + (await answer.text()); }
  catch (err) { results.read = "not readable"; }
  await new Promise((resolve) => setTimeout(resolve, 1000));  // let the beacon go
  return results;
}"""


def test_a_page_of_another_site_can_neither_start_work_nor_read_answers(resolving_browser: Any, server: Server,
                                                                       other_site: str) -> None:
    before = work_areas(server)
    context = resolving_browser.new_context()
    try:
        page = context.new_page()
        page.goto(other_site)
        results = page.evaluate(ATTEMPTS, server.url)
        assert results["read"] == "not readable", results
        assert work_areas(server) == before, results
        # The same requests from the server's own page do reach it and open work areas: the refusal above is
        # the server's (its Origin check), not requests that never left the browser.
        page.goto(server.url)
        page.evaluate(ATTEMPTS, server.url)
        assert len(work_areas(server)) > len(before)
    finally:
        context.close()


def test_a_rebound_host_name_gets_no_page_and_no_answer(resolving_browser: Any, server: Server) -> None:
    """DNS rebinding: a name that now resolves to 127.0.0.1 is the page's own origin, but not the server's host."""
    port = server.url.rsplit(":", 1)[1].strip("/")
    context = resolving_browser.new_context()
    try:
        page = context.new_page()
        answer = page.goto(f"http://{REBOUND}:{port}/")
        assert answer is not None and answer.status == 403
        assert "only answers requests addressed to its own loopback address" in answer.text()
        reads = page.evaluate("""async () => {
          const out = {};
          for (const path of ["/api/config", "/static/app.js"]) {
            const r = await fetch(path); out[path] = r.status;
          }
          const opened = await fetch("/api/sessions", {method: "POST"}); out.open = opened.status;
          return out;
        }""")
        assert reads == {"/api/config": 403, "/static/app.js": 403, "open": 403}
    finally:
        context.close()
