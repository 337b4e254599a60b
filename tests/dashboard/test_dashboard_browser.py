"""The dashboard in a real browser (headless Chromium) over a real coordinator and worker:
log in with a token, see your job in the table, watch its loss curve grow while it trains,
cancel it, read a sweep's trials; never see another user's job, not even by its URL; and
every API route refuses a request without the session cookie.

DASHBOARD_SCREENSHOTS=DIR saves the job and sweep pages there (docs/ holds the ones the
README shows).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dashboard_helpers import TOKENS, long_job, user_client
from jobfiles import write_text_job

SCREENSHOTS = os.environ.get("DASHBOARD_SCREENSHOTS")
pytestmark = pytest.mark.timeout(300)


def status_of(url: str, headers: dict | None = None, method: str = "GET") -> int:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def login(browser, dash, name: str):
    """A browser context logged in as `name` through the login form."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    response = page.goto(dash.url + "/")
    assert response.status == 401  # no cookie yet: the login form
    page.fill("#token", TOKENS[name])
    page.click("#login-button")
    page.wait_for_selector("table#jobs")
    cookies = {c["name"]: c for c in context.cookies()}
    session = cookies["tf_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert TOKENS[name] not in json.dumps(context.cookies())  # the token stays on the server
    assert TOKENS[name] not in page.url
    return context, page


def points(page, title: str) -> int:
    return int(page.get_attribute(f'.chart[data-title="{title}"]', "data-points"))


def test_without_the_cookie_every_api_route_answers_401(fleet):
    _, dash, _ = fleet
    for path in (
        "/api/jobs",
        "/api/jobs/stream",
        "/api/workers",
        "/api/sweeps",
        "/api/jobs/job-0/events",
    ):
        assert status_of(dash.url + path) == 401, path
    assert status_of(dash.url + "/api/jobs/job-0/cancel", method="POST") == 401
    assert status_of(dash.url + "/") == 401  # the page is the login form
    # A made-up session id is no session.
    assert status_of(dash.url + "/api/jobs", {"cookie": "tf_session=forged"}) == 401


def test_job_appears_curve_grows_and_cancel_works(fleet, browser, tiny_bert, sentiment_data):
    cluster, dash, root = fleet
    with user_client(cluster, "alice") as alice:
        job = alice.submit(long_job(root, tiny_bert, sentiment_data))
    context, page = login(browser, dash, "alice")
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/events") else None)
    try:
        row = page.wait_for_selector(f'tr[data-job="{job.id}"]', timeout=15_000)
        assert "long-run" in row.inner_text()
        # The table is live: the row turns RUNNING and grows a progress bar by itself.
        page.wait_for_selector(
            f'tr[data-job="{job.id}"][data-state="RUNNING"] progress', timeout=60_000
        )
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / "dashboard-jobs.png"))
        page.click(f'a[href="/jobs/{job.id}"]')
        page.wait_for_function(
            "() => document.querySelector('.chart[data-title=\"Loss\"]').dataset.points >= 3",
            timeout=60_000,
        )
        first = points(page, "Loss")
        page.wait_for_function(
            f"() => document.querySelector('.chart[data-title=\"Loss\"]').dataset.points > {first}",
            timeout=20_000,
        )
        assert points(page, "Learning rate") > 0 and points(page, "Throughput (samples/s)") > 0
        assert page.locator("#events li").count() > 0
        if SCREENSHOTS:  # a fuller picture: past the first evaluations
            page.wait_for_function(
                "() => document.querySelector('.chart[data-title=\"Eval metrics\"]').dataset.points >= 3",
                timeout=60_000,
            )
            page.screenshot(path=str(Path(SCREENSHOTS) / "dashboard-job.png"), full_page=True)
        # Let the stream be cut (every stream_s = 3 s) and resumed at least once before the
        # job ends: the page may have drawn its points from the replay within the first cut.
        deadline = time.monotonic() + 30
        while len(streams) < 2 and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        page.on("dialog", lambda d: d.accept())
        page.click("#cancel")
        page.wait_for_selector(".job-header .state-cancelled", timeout=30_000)
        with user_client(cluster, "alice") as alice:
            assert alice.get(job.id).state.value == "CANCELLED"
            events = list(alice.events(job.id, follow=False))
        # The stream was cut every 3 s (stream_s) and resumed by Last-Event-ID: each logged
        # event is in the log exactly once, in order.
        lines = [e for e in events if e.kind in ("log", "state_change")]
        lines += [e for e in events if e.metrics and e.metrics.phase == "test"]
        page.wait_for_function(
            f"() => document.querySelectorAll('#events li').length >= {len(lines)}"
        )
        page.wait_for_timeout(500)
        assert page.locator("#events li").count() == len(lines)
        assert len(streams) >= 2, streams  # it did reconnect
        assert events[-1].seq == max(e.seq for e in events) and len(events) == events[-1].seq
    finally:
        context.close()


def test_events_resume_after_the_last_event_id(fleet):
    """The browser's EventSource sends Last-Event-ID on a reconnect: the stream goes on from
    the next seq, so no event is drawn twice or lost."""
    cluster, dash, _ = fleet
    with user_client(cluster, "alice") as alice:
        (job,) = [j for j in alice.list() if j.name == "long-run"]
    context_cookie = _api_cookie(dash, "alice")
    request = urllib.request.Request(
        f"{dash.url}/api/jobs/{job.id}/events",
        headers={"cookie": context_cookie, "last-event-id": "5", "accept": "text/event-stream"},
    )
    with urllib.request.urlopen(request, timeout=20) as r:
        ids = [
            int(line.split(b":")[1]) for line in r.read().splitlines() if line.startswith(b"id:")
        ]
    assert ids[0] == 6 and ids == list(range(6, ids[-1] + 1)) and ids[-1] == job.last_seq


def test_a_user_never_sees_another_users_job(fleet, browser, tiny_bert, sentiment_data):
    cluster, dash, root = fleet
    with user_client(cluster, "bob") as bob:
        secret = bob.submit(write_text_job(root, tiny_bert, sentiment_data, name="bobs-secret"))
        bob.cancel(secret.id)
    context, page = login(browser, dash, "alice")
    try:
        page.wait_for_selector("table#jobs tbody tr[data-job]")
        assert "bobs-secret" not in page.inner_text("table#jobs")
        assert page.locator(f'tr[data-job="{secret.id}"]').count() == 0
        page.select_option("#state-filter", "CANCELLED")  # alice's cancelled long run only
        page.wait_for_function(
            "() => [...document.querySelectorAll('#jobs tr[data-job]')].every("
            "r => r.dataset.state == 'CANCELLED')"
        )
        assert page.locator("#jobs tr[data-job]").count() >= 1
        page.goto(f"{dash.url}/jobs/{secret.id}")
        page.wait_for_selector("text=Job not found")
        assert "bobs-secret" not in page.content()
        status = page.evaluate(f"fetch('/api/jobs/{secret.id}').then(r => r.status)")
        assert status == 404  # exactly what a job that does not exist answers
    finally:
        context.close()


def test_cancel_needs_the_csrf_token_and_this_origin(fleet, tiny_bert, sentiment_data):
    cluster, dash, root = fleet
    with user_client(cluster, "alice") as alice:
        job = alice.submit(write_text_job(root, tiny_bert, sentiment_data, name="to-cancel"))
    cookie = _api_cookie(dash, "alice")
    url = f"{dash.url}/api/jobs/{job.id}/cancel"
    assert status_of(url, {"cookie": cookie}, "POST") == 403  # no X-CSRF-Token
    csrf = cookie.split("tf_csrf=")[1].split(";")[0]
    forged = {"cookie": cookie, "x-csrf-token": csrf, "origin": "http://evil.example"}
    assert status_of(url, forged, "POST") == 403
    assert status_of(url, {"cookie": cookie, "x-csrf-token": csrf}, "POST") == 200
    with user_client(cluster, "alice") as alice:
        assert alice.get(job.id).cancel_requested or alice.get(job.id).is_terminal()


def test_sweep_page_lists_trials_and_marks_the_best(fleet, browser, tiny_bert, sentiment_data):
    cluster, dash, root = fleet
    spec = write_text_job(
        root,
        tiny_bert,
        sentiment_data,
        name="lr-sweep",
        train={"epochs": 2, "batch_size": 16, "precision": "no", "log_every_steps": 2},
        sweep={"space": {"optimizer.lr": [0.005, 0.02]}, "max_concurrent": 1},
    )
    with user_client(cluster, "alice") as alice:
        sweep = alice.submit_sweep(spec)
    context, page = login(browser, dash, "alice")
    try:
        page.goto(f"{dash.url}/sweeps")
        page.wait_for_selector(f'tr[data-sweep="{sweep.id}"]')
        page.click(f'a[href="/sweeps/{sweep.id}"]')
        page.wait_for_selector("table#trials tbody tr[data-trial]", timeout=15_000)
        # Both trials finish; the best one is starred and its curve drawn with the others.
        page.wait_for_selector("table#trials tr.best", timeout=90_000)
        page.wait_for_selector("#sweep-header .state-succeeded", timeout=90_000)
        assert page.locator("table#trials tbody tr[data-trial]").count() == 2
        with user_client(cluster, "alice") as alice:
            final = alice.get_sweep(sweep.id)
        best = final.best_trial
        assert page.get_attribute("table#trials tr.best", "data-trial") == str(best)
        # One param-vs-metric panel per swept field, a point for each trial with a value.
        swept = {p for t in final.trials for p in t.params}
        assert swept == {"optimizer.lr"}
        valued = sum(t.value is not None for t in final.trials)
        assert valued == 2
        for param in swept:
            assert points(page, f"{param} vs {final.metric}") == valued
        page.click('th[data-key="number"]')  # sortable: by trial number, descending
        numbers = page.eval_on_selector_all(
            "table#trials tbody tr", "rs => rs.map(r => r.dataset.trial)"
        )
        assert numbers == sorted(numbers, reverse=True)
        if SCREENSHOTS:
            page.click('th[data-key="value"]')
            page.wait_for_timeout(500)
            page.screenshot(path=str(Path(SCREENSHOTS) / "dashboard-sweep.png"), full_page=True)
    finally:
        context.close()


def test_workers_page_shows_the_worker(fleet, browser):
    cluster, dash, _ = fleet
    context, page = login(browser, dash, "alice")
    try:
        page.goto(f"{dash.url}/workers")
        row = page.wait_for_selector(f'tr[data-worker="{cluster.worker_id}"]')
        assert "LIVE" in row.inner_text() and "ago" in row.inner_text()
    finally:
        context.close()


def _api_cookie(dash, name: str) -> str:
    """A session for scripted requests: the login form posted without a browser."""
    import http.cookiejar
    import urllib.parse

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    body = urllib.parse.urlencode({"token": TOKENS[name], "next": "/"}).encode()
    opener.open(dash.url + "/login", data=body, timeout=10)
    return "; ".join(f"{c.name}={c.value}" for c in jar)


def test_job_page_weighs_under_100_kb_with_no_third_party_request(fleet, browser):
    """Page, script, style and the vendored uPlot: everything the job page loads before its
    data (measured 74 KB uncompressed), all from the dashboard itself (works offline)."""
    cluster, dash, _ = fleet
    with user_client(cluster, "alice") as alice:
        (job,) = [j for j in alice.list() if j.name == "long-run"]
    logged_in, _ = login(browser, dash, "alice")
    # The session's cookies in a context with an empty cache: every byte is counted.
    context = browser.new_context(storage_state=logged_in.storage_state())
    logged_in.close()
    page = context.new_page()
    loaded: list = []
    page.on("requestfinished", lambda r: loaded.append(r))
    try:
        page.goto(f"{dash.url}/jobs/{job.id}", wait_until="networkidle")
        assets = [r for r in loaded if r.resource_type in ("document", "script", "stylesheet")]
        weight = sum(r.sizes()["responseBodySize"] for r in assets)
        assert {r.url.split("/")[2] for r in loaded} == {dash.url.split("/")[2]}
        assert 50_000 < weight < 100_000, weight
    finally:
        context.close()
