"""Figures for BENCHMARKS.md: the dashboard's fleet page in headless
Chromium (Debian's /usr/bin/chromium, driven by Playwright from PyPI).

  dashboard_render.py URL HOSTS [RUNS]

Opens URL (the fleet page of a server started with --insecure, or a login
URL from `monitorctl dashboard`) RUNS times (default 5), each in a fresh
context (nothing cached), and prints per run and as medians, in ms from
the navigation's start (the page's own clock, so Playwright's polling
and round trips are not counted):
  - rows: when the document first holds HOSTS rows (a MutationObserver
    installed before any of the page's scripts runs);
  - painted: the end of the first frame after that (requestAnimationFrame,
    then a task): the table on the screen, the first render;
and whether the page logged any console error. The same measure works on
any version of the page (it needs nothing from dashboard.js).
"""

import statistics
import sys

from playwright.sync_api import sync_playwright

PROBE = """(want) => {
  const seen = () => {
    if (window.__rowsAt !== undefined) return;
    if (document.querySelectorAll('tr[data-host]').length < want) return;
    window.__rowsAt = performance.now();
    requestAnimationFrame(() => setTimeout(() => { window.__paintedAt = performance.now(); }, 0));
  };
  new MutationObserver(seen).observe(document, { childList: true, subtree: true });
}"""


def main():
    url, hosts = sys.argv[1], int(sys.argv[2])
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    rows, painted = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        for run in range(runs):
            context = browser.new_context(ignore_https_errors=True,
                                          viewport={"width": 1280, "height": 900})
            context.add_init_script(f"({PROBE})({hosts})")
            page = context.new_page()
            errors = []
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function("() => window.__paintedAt !== undefined", timeout=60_000)
            r, d = page.evaluate("() => [window.__rowsAt, window.__paintedAt]")
            rows.append(r)
            painted.append(d)
            print(f"run {run + 1}: {hosts} rows at {r:.0f} ms, painted at {d:.0f} ms"
                  f"{', console errors: ' + '; '.join(errors[:3]) if errors else ''}", flush=True)
            context.close()
        browser.close()
    print(f"fleet page with {hosts} hosts, median of {runs}: rows at {statistics.median(rows):.0f} ms, "
          f"first render (painted) {statistics.median(painted):.0f} ms")


if __name__ == "__main__":
    main()
