"""The dashboard's pages over plain HTTP against a real coordinator (no worker, no browser):
a page for a job or sweep that does not exist answers 404 with its reason, as its API route
does, rather than a 200 shell that draws an empty page; values from users stay text."""

from __future__ import annotations

import http.cookiejar
import urllib.error
import urllib.request

import pytest
from jobfiles import write_text_job

pytest.importorskip("starlette")


def fetch(opener, url: str) -> tuple[int, str]:
    try:
        with opener.open(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_page_for_an_unknown_job_or_sweep_is_a_404_naming_it(tmp_path):
    from tunefleet.client import Client, LocalCluster
    from tunefleet.client.dashboard import DashboardServer

    (tmp_path / "model").mkdir()
    data = (tmp_path / "train.csv", tmp_path / "eval.csv")
    for path in data:
        path.write_text("text,label\na,0\n")
    spec = write_text_job(tmp_path, tmp_path / "model", data, name="dash-job")
    with (
        LocalCluster(worker=False, db_path=tmp_path / "db") as cluster,
        DashboardServer("127.0.0.1:0", coordinator=cluster.address) as dash,
    ):
        with Client(cluster.address) as client:
            job = client.submit(spec)
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        status, _ = fetch(opener, f"{dash.url}/jobs/{job.id}")  # also opens the session
        assert status == 200
        status, html = fetch(opener, f"{dash.url}/jobs/job-nope")
        assert status == 404
        assert 'data-page="missing" data-item="job"' in html
        assert "job job-nope not found" in html
        status, html = fetch(opener, f"{dash.url}/sweeps/sweep-nope")
        assert status == 404
        assert 'data-item="sweep"' in html and "sweep sweep-nope not found" in html
        status, html = fetch(opener, f"{dash.url}/jobs/%3Cb%3E%22x")  # the id is text too
        assert status == 404
        assert "<b>" not in html and "&lt;b&gt;&quot;x" in html
        # A fresh browser (no cookie yet) on a coordinator without tokens: 404 too.
        status, _ = fetch(urllib.request.build_opener(), f"{dash.url}/jobs/job-nope")
        assert status == 404
