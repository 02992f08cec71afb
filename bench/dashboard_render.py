"""Figures for BENCHMARKS.md: the dashboard's fleet page in headless
Chromium (Debian's /usr/bin/chromium, driven by Playwright from PyPI).

  dashboard_render.py URL HOSTS [RUNS]

Opens URL (the fleet page of a server started with --insecure, or a login
URL from `monitorctl dashboard`) RUNS times (default 5), each in a fresh
context (nothing cached), and prints per run and as medians, in ms from
the navigation's start (the page's own clock, so Playwright's polling
and round trips are not counted), each as the end of the first frame
after the document holds the rows (requestAnimationFrame, then a task;
a MutationObserver installed before any of the page's scripts runs sees
the rows arrive):
  - first screen: 25 rows, what a 900 px high window shows (the first
    render a person sees);
  - all rows: HOSTS rows (the page may add rows below the screen after
    its first frame);
and any console error. The same measure works on any version of the page
(it needs nothing from dashboard.js).
"""

import statistics
import sys

from playwright.sync_api import sync_playwright

PROBE = """(want) => {
  const marks = [['__screen', Math.min(want, SCREEN_ROWS)], ['__all', want]];
  const seen = () => {
    const rows = document.querySelectorAll('tr[data-host]').length;
    for (const [name, n] of marks) {
      if (window[name] !== undefined || rows < n) continue;
      window[name] = null;
      requestAnimationFrame(() => setTimeout(() => { window[name] = performance.now(); }, 0));
    }
  };
  new MutationObserver(seen).observe(document, { childList: true, subtree: true });
}""".replace("SCREEN_ROWS", "25")


def main():
    url, hosts = sys.argv[1], int(sys.argv[2])
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    screen, whole = [], []
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
            page.wait_for_function("() => window.__screen && window.__all", timeout=60_000)
            s, w = page.evaluate("() => [window.__screen, window.__all]")
            screen.append(s)
            whole.append(w)
            print(f"run {run + 1}: first screen painted at {s:.0f} ms, all {hosts} rows at {w:.0f} ms"
                  f"{', console errors: ' + '; '.join(errors[:3]) if errors else ''}", flush=True)
            context.close()
        browser.close()
    print(f"fleet page with {hosts} hosts, median of {runs}: first render (first screen painted) "
          f"{statistics.median(screen):.0f} ms, all rows painted {statistics.median(whole):.0f} ms")


if __name__ == "__main__":
    main()
