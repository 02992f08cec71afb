"""The dashboard in a real browser (Debian's Chromium, driven headless by
Playwright from PyPI), against a real server with real agents that
tests/dashboard.rs started. One JSON argument:

  {"login_url": ..., "hosts": [...], "kill_host": ..., "kill_pid": ...,
   "pi_host": ..., "plain_host": ..., "out_dir": ...}

It logs in with the one-time URL, then checks: the fleet page lists every
host with values and a sparkline per metric; a host page draws one plot per series with the line
actually drawn (pixels of the line colour on every canvas); the killed
agent's row turns offline on the open fleet page without a reload; a
fake Raspberry Pi's host page has a health section with a temperature plot
drawn from /api/hosts/NAME/health and its file systems named in a legend,
and a plain host's has no temperature plot; the
commands page loads; phone width needs no sideways scrolling; dark mode
changes the colours; no console error and no request to anything but
127.0.0.1. It writes screenshots and the series answers the host page
fetched (series-HOST.json and the Pi's health-HOST.json, which the Rust
side compares with the store)
into out_dir, and prints one JSON line: {"ok": true, ...} or
{"ok": false, "why": ...}. Exit 0 only when ok.
"""

import json
import os
import signal
import sys
import time
from urllib.parse import urlparse

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
# Generous: a loaded 2-core machine.
WAIT_MS = 30_000


class Failed(Exception):
    pass


def check(cond, why):
    if not cond:
        raise Failed(why)


def main():
    args = json.loads(sys.argv[1])
    out = args["out_dir"]
    os.makedirs(out, exist_ok=True)
    report = {"screenshots": [], "requests": 0}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update"],
        )
        try:
            run(browser, args, out, report)
            report["ok"] = True
        except Failed as e:
            report["ok"] = False
            report["why"] = str(e)
        finally:
            browser.close()
    print(json.dumps(report))
    return 0 if report["ok"] else 1


def watch(context, report, problems):
    """Records every request (and refuses any to another host) and every
    console error of every page of the context."""

    def on_request(req):
        report["requests"] += 1
        host = urlparse(req.url).hostname
        if req.url.startswith("data:") or req.url.startswith("about:"):
            return
        if host != "127.0.0.1":
            problems.append("request to another host: " + req.url)

    def on_page(page):
        page.on("console", lambda m: m.type == "error" and problems.append(
            "console error on " + page.url + ": " + m.text))
        page.on("pageerror", lambda e: problems.append(
            "page error on " + page.url + ": " + str(e)))

    context.on("request", on_request)
    context.on("page", on_page)


def shot(page, out, name, report):
    path = os.path.join(out, name)
    page.screenshot(path=path, full_page=True)
    report["screenshots"].append(path)


# The six core plots (the health plots are in div.plots.health).
CORE = "div.plots:not(.health) figure.plot"


def line_pixels(page, selector=CORE):
    """Per plot canvas under `selector`: how many pixels have the mean
    line's colour."""
    return page.evaluate("""(selector) => {
        const probe = document.createElement('div');
        probe.style.color = getComputedStyle(document.body).getPropertyValue('--line').trim();
        document.body.append(probe);
        const [r, g, b] = getComputedStyle(probe).color.match(/\\d+/g).map(Number);
        probe.remove();
        return [...document.querySelectorAll(selector + ' canvas')].map((c) => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (Math.abs(d[i] - r) < 40 && Math.abs(d[i + 1] - g) < 40 &&
                    Math.abs(d[i + 2] - b) < 40 && d[i + 3] > 200) n++;
            }
            return n;
        });
    }""", selector)


def pi_and_plain_health(context, args, out, report):
    """The fake Pi's host page: a health section with a temperature plot
    (its line drawn) from the health answer it fetched, and a file system
    plot whose legend names both mount points; the plain host's: no
    temperature plot."""
    base = args["login_url"].split("/login")[0]
    pi = args["pi_host"]
    page = context.new_page()
    answers = []
    page.on("response", lambda r: answers.append(r.json())
            if "/health?" in r.url and r.status == 200 else None)
    page.goto(base + "/host/" + pi)
    temp = 'div.plots.health figure.plot[data-series="temp_celsius"]'
    page.wait_for_selector(temp + " canvas", timeout=WAIT_MS)
    check(answers, "the Pi's host page fetched no health series")
    answer = answers[-1]
    check(answer["hostname"] == pi, "health series of the wrong host")
    temps = [s for s in answer["series"] if s["metric"] == "temp_celsius"]
    check(len(temps) == 1, f"{len(temps)} temperature series")
    values = [v for v in temps[0]["mean"] if v is not None]
    check(len(values) >= 3, f"only {len(values)} temperature buckets")
    drawn = line_pixels(page, temp)
    check(drawn and drawn[0] > 20, f"the temperature plot shows no line ({drawn})")
    fs = page.inner_text('figure.plot[data-series="fs_used_percent"] .u-legend')
    check("/boot/firmware" in fs, "the file systems' legend names no mount point: " + fs)
    check(page.query_selector('figure.plot[data-series="throttled_flags"] canvas'),
          "no throttling plot")
    with open(os.path.join(out, f"health-{pi}.json"), "w") as f:
        json.dump(answer, f)
    report["health_file"] = os.path.join(out, f"health-{pi}.json")
    shot(page, out, "host-pi.png", report)
    page.close()

    plain = context.new_page()
    plain.goto(base + "/host/" + args["plain_host"])
    plain.wait_for_function("() => window.monitorDashboard.healthPlot !== null",
                            timeout=WAIT_MS)
    plain.wait_for_selector(CORE + " canvas", timeout=WAIT_MS)
    check(not plain.query_selector('figure.plot[data-series="temp_celsius"]'),
          "a host without a thermal zone shows a temperature plot")
    check(not plain.query_selector('figure.plot[data-series="throttled_flags"]'),
          "a host without the Pi's firmware shows a throttling plot")
    plain.close()


def run(browser, args, out, report):
    problems = []
    context = browser.new_context(
        # The server's certificate is signed by its own CA; the Rust tests
        # check the chain, this one the pages.
        ignore_https_errors=True,
        viewport={"width": 1280, "height": 900},
        color_scheme="light",
    )
    watch(context, report, problems)
    page = context.new_page()

    # The one-time URL sets the session and lands on the fleet page.
    page.goto(args["login_url"])
    check(urlparse(page.url).path == "/", "the login did not land on /: " + page.url)
    check("token" not in page.url, "the token stayed in the address bar")
    for h in args["hosts"]:
        page.wait_for_selector(f'tr[data-host="{h}"].online', timeout=WAIT_MS)
    # Values, not dashes, in every metric cell of every host.
    page.wait_for_function("""(hosts) => hosts.every((h) => {
        const row = document.querySelector(`tr[data-host="${h}"]`);
        const cells = row ? [...row.querySelectorAll('td.num')] : [];
        return cells.length >= 6 && cells.slice(0, 6).every((c) => /\\d/.test(c.textContent));
    })""", arg=args["hosts"], timeout=WAIT_MS)
    # A sparkline per metric (the last 15 minutes, from /api/sparklines).
    for h in args["hosts"]:
        page.wait_for_function(
            f"""() => document.querySelectorAll('tr[data-host="{h}"] svg.spark polyline').length >= 6""",
            timeout=WAIT_MS)
    shot(page, out, "fleet.png", report)

    # A host page: one plot per series the API gave, each with its line drawn.
    host = args["hosts"][0]
    host_page = context.new_page()
    answers = []

    def on_response(r):
        if "/series?" in r.url and r.status == 200:
            answers.append(r.json())

    host_page.on("response", on_response)
    host_page.goto(args["login_url"].split("/login")[0] + "/host/" + host)
    host_page.wait_for_selector(CORE + " canvas", timeout=WAIT_MS)
    host_page.wait_for_function(
        "(core) => window.monitorDashboard.plot && document.querySelectorAll(core).length"
        " === window.monitorDashboard.plot.series.length", arg=CORE, timeout=WAIT_MS)
    check(answers, "the host page fetched no series")
    answer = answers[-1]
    check(answer["hostname"] == host, "series of the wrong host")
    check(len(answer["series"]) >= 6, "fewer than six series")
    drawn = line_pixels(host_page)
    check(len(drawn) == len(answer["series"]), f"{len(drawn)} canvases for "
          f"{len(answer['series'])} series")
    # cpu and memory always vary on a live host: their line must show.
    for i, s in enumerate(answer["series"]):
        values = [v for v in s["mean"] if v is not None]
        check(values, f"series {s['metric']} has no values")
        if s["metric"] in ("cpu_percent", "mem_percent"):
            # A line needs points: one bucket is a dot. tests/dashboard.rs
            # waits for 15 s of history (five 3 s buckets) before this
            # runs; fewer means the page was loaded too early, not that it
            # drew badly (on PostgreSQL under load, the agents were online
            # seconds before their first batches were committed).
            check(len(values) >= 3, f"plot {s['metric']}: only {len(values)} buckets with "
                  f"data (step {answer['step_ms']} ms): the host page was loaded too early")
            check(drawn[i] > 20, f"plot {s['metric']} shows no line ({drawn[i]} pixels; "
                  f"{len(values)} values in {len(answer['times'])} rows, step "
                  f"{answer['step_ms']} ms, interval {s['interval_ms']} ms, values {values[:8]}, "
                  f"times {answer['times'][:8]}, since {answer['since_unix_ms']}, "
                  f"until {answer['until_unix_ms']})")
    with open(os.path.join(out, f"series-{host}.json"), "w") as f:
        json.dump(answer, f)
    report["series_file"] = os.path.join(out, f"series-{host}.json")
    report["line_pixels"] = drawn
    shot(host_page, out, "host.png", report)
    # Another range comes from the server too.
    n = len(answers)
    host_page.click('button[data-range="15m"]')
    deadline = time.time() + WAIT_MS / 1000
    while len(answers) == n and time.time() < deadline:
        host_page.wait_for_timeout(100)
    check(len(answers) > n, "picking 15 min fetched nothing")
    check(answers[-1]["step_ms"] == 1000, "15 min is not at 1 s steps")

    pi_and_plain_health(context, args, out, report)

    # The killed agent turns offline on the open fleet page, no reload.
    page.bring_to_front()
    page.evaluate("() => { window.notReloaded = true; }")
    os.kill(args["kill_pid"], signal.SIGKILL)
    page.wait_for_selector(f'tr[data-host="{args["kill_host"]}"].offline', timeout=WAIT_MS)
    check(page.evaluate("() => window.notReloaded === true"), "the page was reloaded")
    for h in args["hosts"]:
        if h != args["kill_host"]:
            check(page.query_selector(f'tr[data-host="{h}"].online'), f"{h} is not online")
    shot(page, out, "fleet-offline.png", report)

    # The commands page.
    cmds = context.new_page()
    cmds.goto(args["login_url"].split("/login")[0] + "/commands")
    cmds.wait_for_selector("table.commands tbody tr", timeout=WAIT_MS)
    shot(cmds, out, "commands.png", report)

    # Phone width: nothing wider than the screen but the tables' own
    # scrolling boxes.
    phone = browser.new_context(ignore_https_errors=True, viewport={"width": 375, "height": 800},
                                color_scheme="dark", storage_state=context.storage_state())
    watch(phone, report, problems)
    p2 = phone.new_page()
    p2.goto(args["login_url"].split("/login")[0] + "/host/" + host)
    p2.wait_for_selector(CORE + " canvas", timeout=WAIT_MS)
    overflow = p2.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    check(overflow <= 1, f"the host page is {overflow}px wider than a phone")
    dark_bg = p2.evaluate("() => getComputedStyle(document.body).backgroundColor")
    light_bg = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    check(dark_bg != light_bg, "dark mode looks like light mode")
    shot(p2, out, "host-phone-dark.png", report)
    p2.goto(args["login_url"].split("/login")[0] + "/")
    p2.wait_for_selector("tr[data-host]", timeout=WAIT_MS)
    overflow = p2.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    check(overflow <= 1, f"the fleet page is {overflow}px wider than a phone")
    shot(p2, out, "fleet-phone-dark.png", report)
    phone.close()

    check(not problems, "; ".join(problems[:5]))
    context.close()


if __name__ == "__main__":
    sys.exit(main())
