"""The dashboard in a real browser (Debian's Chromium, driven by Playwright): run by tests/dashboard.rs
against a real `tributary serve` that holds produced events and a batch version.

It reads the page as a person would and checks it against the API: every headline total equals
`/v1/query` for the same range and snapshot, the late bars add up to the late total, the seam marker
is drawn, view / range / group-by / filter changes refresh the page, a 4xx shows next to the control that
caused it, auto-refresh shows pushed events without a click, a lost connection shows "reconnecting"
and recovers, a row-filtered token sees only its rows, and nothing is written to the console but
the failed loads this script provokes on purpose. It saves a screenshot to the path it is given.

Environment: DASHBOARD_URL, TOKEN (read + ingest), NL_TOKEN (read, row filter country = 'NL'),
SCREENSHOT (a path), CHROMIUM (the browser binary).
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

from playwright.sync_api import sync_playwright

URL = os.environ["DASHBOARD_URL"].rstrip("/")
TOKEN = os.environ["TOKEN"]
NL_TOKEN = os.environ["NL_TOKEN"]
SCREENSHOT = os.environ["SCREENSHOT"]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

# Console lines this script provokes on purpose, by phase: the browser's own report of a refused
# request, or of the network it took away. Anything else in the console fails the test.
allowed = []
console = []


def log(text):
    print(f"[dashboard.py] {text}", flush=True)


def api(method, path, body=None, token=TOKEN):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(URL + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def shown(value):
    """The page's formatting (dashboard.js `shown`)."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text


def refreshed(page):
    return int(page.get_attribute("body", "data-refreshed"))


def wait_refresh(page, after, what, timeout=30):
    """Waits until the page finished a refresh after number `after`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = page.eval_on_selector("body", "b => [Number(b.dataset.refreshed), b.dataset.state, b.dataset.busy]")
        if body[0] > after and body[1] == "ready" and body[2] == "false":
            return
        time.sleep(0.1)
    state = page.get_attribute("body", "data-state")
    errors = page.eval_on_selector_all("[data-error-for]", "nodes => nodes.map(n => n.dataset.errorFor + ': ' + n.textContent)")
    raise AssertionError(f"no refresh after {what} within {timeout} s (state {state}, errors {errors})")


def change(page, selector, value, what):
    before = refreshed(page)
    page.select_option(selector, value)
    wait_refresh(page, before, what)


def totals(page):
    """The headline totals as shown, the query they answer and its snapshot: read in one go, so
    that an auto-refresh cannot slip between them."""
    read = page.eval_on_selector("#totals", """section => ({
        query: section.dataset.query,
        snapshot: section.dataset.snapshot,
        totals: [...section.querySelectorAll("[data-total]")].map(n => [n.dataset.total, n.dataset.value, n.textContent]),
    })""")
    shown_totals = {name: (json.loads(value), text) for name, value, text in read["totals"]}
    return json.loads(read["query"]), read["snapshot"], shown_totals


def check_totals(page, what, token=TOKEN):
    query, snapshot, shown_totals = totals(page)
    answer = api("POST", "/v1/query", {**query, "snapshot": snapshot}, token)
    row = answer["rows"][0] if answer["rows"] else {}
    assert set(shown_totals) == set(query["metrics"]), f"{what}: {shown_totals} vs {query}"
    for metric, (value, text) in shown_totals.items():
        want = row.get(metric)
        assert value == want, f"{what}: {metric} shows {value}, /v1/query says {want}"
        assert text == shown(want), f"{what}: {metric} reads {text!r}, expected {shown(want)!r}"
    log(f"{what}: totals equal /v1/query: {shown_totals}")
    return {metric: value for metric, (value, _) in shown_totals.items()}


def error_for(page, control):
    return page.inner_text(f'[data-error-for="{control}"]').strip()


def push(count):
    """`count` on-time pageviews with a page, through push ingest."""
    now = datetime.now(timezone.utc)
    lines = []
    for n in range(count):
        ts = (now - timedelta(milliseconds=n)).isoformat().replace("+00:00", "Z")
        lines.append(json.dumps({"ts": ts, "user_id": f"browser-{n}", "session_id": "s-browser",
                                 "page": "/browser-test", "country": "NL", "device": "desktop",
                                 "latency_ms": 12.5, "bytes": 100}))
    body = ("\n".join(lines) + "\n").encode()
    request = urllib.request.Request(URL + "/v1/events", data=body, method="POST")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=30) as reply:
        report = json.loads(reply.read())
    assert report["accepted"] == count, report


def main():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        # The page's CSP forbids eval; Playwright's waits evaluate strings, so the test bypasses it
        # (the header itself is checked by the Rust side).
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
        page = context.new_page()
        page.on("console", lambda m: console.append((m.type, m.text, list(allowed))))
        page.on("pageerror", lambda e: console.append(("pageerror", str(e), [])))

        # 1. Without a token: the 401 shows next to the token field, not in the console.
        allowed.append("status of 401")
        page.goto(URL + "/")
        page.wait_for_function("document.body.dataset.state === 'error'", timeout=20000)
        assert error_for(page, "token"), "no 401 message next to the token field"
        log(f"without a token: {error_for(page, 'token')!r}")
        allowed.remove("status of 401")

        # 2. With a token: totals equal the API, the seam and the late bars are drawn.
        before = refreshed(page)
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        wait_refresh(page, before, "entering the token")
        assert error_for(page, "token") == ""
        page.select_option("#refresh", "0")
        values = check_totals(page, "pageviews, last 1 h")
        assert values["views"] > 0 and values["late"] > 0, values
        status = api("GET", "/v1/status")
        version = next(v["version"] for v in status["batch"]["views"] if v["view"] == "pageviews")
        assert page.get_attribute("#seam", "data-version") == str(version), "seam: batch version"
        markers = page.locator("svg line.seam-marker")
        assert markers.count() >= 1, "no seam marker on the charts"
        bars = [int(b.get_attribute("data-value")) for b in page.locator("rect.late-bar").all()]
        assert sum(bars) == values["late"], f"late bars {sum(bars)} vs late total {values['late']}"
        assert page.locator("#charts svg[data-metric]").count() == 3, "one chart per selected metric"
        assert page.locator("#views-list [data-view]").count() == 2, "the views list"
        status_text = page.inner_text("#status-body")
        assert "published" in status_text and "archived" in status_text, status_text
        log(f"seam at {page.get_attribute('#seam', 'data-seam')}, {len(bars)} late bars")

        # 3. Another view, another range, a group-by.
        change(page, "#view", "traffic", "view traffic")
        traffic = check_totals(page, "traffic, last 1 h")
        assert "events" in traffic and "views" not in traffic, traffic
        change(page, "#range", "24h", "range 24 h")
        traffic_all = check_totals(page, "traffic, last 24 h")
        change(page, "#group-by", "device", "group by device")
        check_totals(page, "traffic by device")
        groups = page.locator("#groups-table tr").count() - 1
        assert page.is_visible("#groups") and groups >= 2, f"top groups: {groups}"
        legend = page.locator("#charts .chart-box").first.locator(".legend span").count()
        assert legend == groups, f"one line per top group: {legend} vs {groups}"
        log(f"group by device: {groups} groups")

        # 4. A 4xx next to the control that caused it: traffic is stored per hour, not per minute.
        allowed.append("status of 400")
        before = refreshed(page)
        page.select_option("#granularity", "1m")
        page.wait_for_function("document.body.dataset.state === 'error'", timeout=20000)
        message = error_for(page, "granularity")
        assert "granularity" in message, f"granularity error: {message!r}"
        assert error_for(page, "view") == "" and page.is_hidden("#general-error")
        log(f"bad granularity: {message!r}")
        change(page, "#granularity", "auto", "granularity back to auto")
        allowed.remove("status of 400")
        assert error_for(page, "granularity") == ""
        change(page, "#group-by", "", "no group-by")

        # 4b. Filters: one that holds (the totals still equal the API, for the filtered rows), and
        #     an `in` without values, refused next to the filters.
        page.click("#add-filter")
        row = page.locator(".filter-row").last
        row.locator(".f-field").select_option("device")
        row.locator(".f-value").fill("mobile")
        before = refreshed(page)
        row.locator(".f-value").dispatch_event("change")
        wait_refresh(page, before, "a filter device = mobile")
        filtered = check_totals(page, "traffic, device = mobile")
        query, _, _ = totals(page)
        assert query["filter"] == [{"field": "device", "op": "eq", "value": "mobile"}], query
        assert 0 < filtered["events"] < traffic_all["events"], (filtered, traffic_all)
        allowed.append("status of 400")
        row.locator(".f-op").select_option("in")
        row.locator(".f-value").fill("")
        row.locator(".f-value").dispatch_event("change")
        page.wait_for_function("document.body.dataset.state === 'error'", timeout=20000)
        message = error_for(page, "filters")
        assert "non-empty" in message, f"filter error: {message!r}"
        allowed.remove("status of 400")
        before = refreshed(page)
        row.locator("button").click()
        wait_refresh(page, before, "the filter removed")
        assert error_for(page, "filters") == ""

        # 5. Auto-refresh shows new events without a click (a fixed range: nothing slides out).
        change(page, "#view", "pageviews", "back to pageviews")
        now = datetime.now(timezone.utc).replace(microsecond=0)
        page.select_option("#range", "custom")
        page.fill("#from", (now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S"))
        page.fill("#to", (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"))
        before = refreshed(page)
        page.dispatch_event("#to", "change")
        wait_refresh(page, before, "a custom range")
        start = check_totals(page, "pageviews, custom range")
        page.select_option("#refresh", "5")
        push(50)
        deadline = time.time() + 45
        while time.time() < deadline:
            _, _, now_totals = totals(page)
            if now_totals["views"][0] == start["views"] + 50:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"auto-refresh did not show 50 pushed events: {start} -> {now_totals}")
        check_totals(page, "after auto-refresh")
        log("auto-refresh showed the 50 pushed events")

        # 6. A lost connection shows "reconnecting" and recovers.
        allowed.append("ERR_INTERNET_DISCONNECTED")
        context.set_offline(True)
        page.wait_for_function("document.body.dataset.state === 'reconnecting'", timeout=20000)
        assert page.is_visible("#connection") and "reconnecting" in page.inner_text("#connection")
        before = refreshed(page)
        context.set_offline(False)
        wait_refresh(page, before, "reconnecting", timeout=30)
        assert page.is_hidden("#connection")
        allowed.remove("ERR_INTERNET_DISCONNECTED")
        log("reconnected")

        # 7. A row-filtered token sees its rows only, and the page says so in its totals.
        page.select_option("#refresh", "0")
        everything = check_totals(page, "all rows")
        before = refreshed(page)
        page.fill("#token", NL_TOKEN)
        page.dispatch_event("#token", "change")
        wait_refresh(page, before, "the NL token")
        nl = check_totals(page, "NL rows only", token=NL_TOKEN)
        assert 0 < nl["views"] < everything["views"], f"NL {nl} vs all {everything}"

        # Back to the full view for the screenshot.
        before = refreshed(page)
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        wait_refresh(page, before, "the full token again")
        change(page, "#range", "1h", "last 1 h for the screenshot")
        page.screenshot(path=SCREENSHOT, full_page=True)
        log(f"screenshot: {SCREENSHOT}")
        browser.close()

    unexpected = [
        (kind, text) for kind, text, allowed_then in console
        if kind in ("error", "pageerror")
        and not any(a in text for a in allowed_then)
    ]
    assert not unexpected, f"console: {unexpected}"
    log(f"no console errors ({len(console)} console lines in all)")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failure:
        print(f"[dashboard.py] FAILED: {failure}", file=sys.stderr, flush=True)
        sys.exit(1)
