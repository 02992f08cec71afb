"""Figures for BENCHMARKS.md: the dashboard's fleet page in headless
Chromium (Debian's /usr/bin/chromium, driven by Playwright from PyPI).

  dashboard_render.py URL HOSTS [--hold PAGES SECONDS]

Opens URL (the fleet page of a server started with --insecure, or a login
URL from `monitorctl dashboard`) and prints the time from navigation to
the table showing HOSTS rows: the first render. With --hold, then keeps
PAGES fleet pages open (each polling /api/hosts every 3 s, as a person's
would) for SECONDS, so bench/run.sh can measure ingest capacity meanwhile.
"""

import sys
import time

from playwright.sync_api import sync_playwright


def main():
    url, hosts = sys.argv[1], int(sys.argv[2])
    hold = None
    if len(sys.argv) == 6 and sys.argv[3] == "--hold":
        hold = (int(sys.argv[4]), float(sys.argv[5]))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(ignore_https_errors=True,
                                      viewport={"width": 1280, "height": 900})
        page = context.new_page()
        started = time.monotonic()
        page.goto(url)
        page.wait_for_function(f"() => document.querySelectorAll('tr[data-host]').length >= {hosts}",
                               timeout=60_000, polling=10)
        first_render_s = time.monotonic() - started
        print(f"fleet page with {hosts} hosts: first render {first_render_s * 1000:.0f} ms")
        if hold:
            pages, seconds = hold
            base = page.url.split("/login")[0].rstrip("/")
            for _ in range(pages - 1):
                context.new_page().goto(base + "/")
            print(f"holding {pages} fleet pages open for {seconds:.0f} s", flush=True)
            time.sleep(seconds)
        browser.close()


if __name__ == "__main__":
    main()
