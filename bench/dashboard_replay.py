"""What open fleet pages cost the SERVER, without running browsers on its
cores: replays the requests a fleet page makes (recorded with Playwright's
request log: GET /api/hosts?form=rows 3 s after each answer (a server
without the compact form answers the full one), GET /api/sparklines
15 s after each answer, each with If-None-Match: the ETag of the answer
the page holds; the page and its assets once, then cached), for PAGES
pages, with a light HTTP client (keep-alive, gzip asked for as a browser
does, bodies read and dropped: parsing and drawing happen on the viewers'
machines). For BENCHMARKS.md (bench/dashboard.sh).

  dashboard_replay.py BASE_URL --pages N
      replays until killed (while monitor-loadgen measures capacity);
  dashboard_replay.py BASE_URL --pages N --pid PID --windows K --window S
      measures: K windows of S seconds, alternating without and with the
      replay (starting without), and prints the server's CPU (PID's
      utime + stime from /proc) in each, the requests made, and the
      server's CPU per request and per poll of all N pages.

BASE_URL is the server's HTTP listener started with --insecure
(http://127.0.0.1:PORT); loopback only.
"""

import argparse
import http.client
import os
import statistics
import sys
import threading
import time
from urllib.parse import urlparse

POLL_HOSTS_S = 3.0
# What the fleet page asks for (server/src/http/assets/dashboard.js).
HOSTS_PATH = "/api/hosts?form=rows"
POLL_SPARKS_S = 15.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Page(threading.Thread):
    """One fleet page's requests while `on` is set; counts what it asked."""

    def __init__(self, host, port, offset_s, on, stop, counts, lock):
        super().__init__(daemon=True)
        self.host, self.port, self.offset_s = host, port, offset_s
        self.on, self.stop, self.counts, self.lock = on, stop, counts, lock
        self.conn = None
        self.etags = {}

    def get(self, path, counted_as=None):
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                headers = {"Accept-Encoding": "gzip"}
                if path in self.etags:
                    headers["If-None-Match"] = self.etags[path]
                self.conn.request("GET", path, headers=headers)
                r = self.conn.getresponse()
                body = r.read()
                if r.status == 200 and r.getheader("ETag"):
                    self.etags[path] = r.getheader("ETag")
                with self.lock:
                    key = counted_as or path
                    self.counts[key] = self.counts.get(key, 0) + 1
                    self.counts["bytes"] = self.counts.get("bytes", 0) + len(body)
                    if r.status == 304:
                        self.counts["not_modified"] = self.counts.get("not_modified", 0) + 1
                    elif r.status != 200:
                        self.counts["errors"] = self.counts.get("errors", 0) + 1
                return
            except (OSError, http.client.HTTPException):
                self.conn = None
        with self.lock:
            self.counts["errors"] = self.counts.get("errors", 0) + 1

    def run(self):
        # Pages opened a little apart, as people would.
        next_hosts = next_sparks = time.monotonic() + self.offset_s
        while not self.stop.is_set():
            self.on.wait(0.5)
            if not self.on.is_set():
                # A page opened anew when the replay resumes.
                next_hosts = next_sparks = time.monotonic() + self.offset_s
                self.etags = {}
                continue
            now = time.monotonic()
            if now >= next_hosts:
                self.get(HOSTS_PATH, "/api/hosts")
                next_hosts = time.monotonic() + POLL_HOSTS_S
            if now >= next_sparks:
                self.get("/api/sparklines")
                next_sparks = time.monotonic() + POLL_SPARKS_S
            time.sleep(max(0.0, min(next_hosts, next_sparks) - time.monotonic()))


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based); after the ")" the
    # list starts at field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("--pages", type=int, required=True)
    ap.add_argument("--pid", type=int)
    ap.add_argument("--windows", type=int, default=6)
    ap.add_argument("--window", type=float, default=15.0)
    a = ap.parse_args()
    u = urlparse(a.base_url)
    if u.hostname not in ("127.0.0.1", "::1") or u.scheme != "http":
        sys.exit("dashboard_replay.py: expected http://127.0.0.1:PORT (a server run with --insecure)")
    on, stop, lock = threading.Event(), threading.Event(), threading.Lock()
    counts = {}
    pages = [Page(u.hostname, u.port, i * POLL_HOSTS_S / a.pages, on, stop, counts, lock)
             for i in range(a.pages)]
    if a.pid is None:
        on.set()
        for p in pages:
            p.start()
        print(f"replaying {a.pages} fleet pages", flush=True)
        try:
            while True:
                time.sleep(60)
                with lock:
                    print(f"requests so far: {counts}", flush=True)
        except KeyboardInterrupt:
            return 0
    for p in pages:
        p.start()
    off_pct, on_pct, rows = [], [], []
    for w in range(a.windows):
        replay = w % 2 == 1
        if replay:
            on.set()
        # Let the state settle (the first requests of a resumed replay
        # fall inside the window, as a page's would).
        with lock:
            before = dict(counts)
        c0, t0 = cpu_s(a.pid), time.monotonic()
        time.sleep(a.window)
        c1, t1 = cpu_s(a.pid), time.monotonic()
        on.clear()
        with lock:
            made = {k: v - before.get(k, 0) for k, v in counts.items()}
        pct = (c1 - c0) / (t1 - t0) * 100
        (on_pct if replay else off_pct).append(pct)
        hosts_req = made.get("/api/hosts", 0)
        rows.append((replay, pct, hosts_req, made.get("/api/sparklines", 0), made.get("errors", 0)))
        print(f"window {w + 1}: replay {'on ' if replay else 'off'} server CPU {pct:5.1f} % of a core, "
              f"/api/hosts {hosts_req}, /api/sparklines {made.get('/api/sparklines', 0)}, "
              f"304s {made.get('not_modified', 0)}, bytes {made.get('bytes', 0)}, "
              f"errors {made.get('errors', 0)}", flush=True)
    stop.set()
    # The mean counts what happens once in a while (the sparklines' whole
    # 15-minute read), which the median leaves out.
    print(f"mean server CPU: {statistics.mean(off_pct):.1f} % without, "
          f"{statistics.mean(on_pct):.1f} % with {a.pages} pages "
          f"(+{statistics.mean(on_pct) - statistics.mean(off_pct):.1f} % of a core)")
    off, onm = statistics.median(off_pct), statistics.median(on_pct)
    hosts_per_s = statistics.median(r[2] for r in rows if r[0]) / a.window
    extra_pct = onm - off
    print(f"median server CPU: {off:.1f} % without, {onm:.1f} % with {a.pages} pages "
          f"(+{extra_pct:.1f} % of a core)")
    if hosts_per_s > 0:
        per_request_ms = extra_pct / 100 / hosts_per_s * 1000
        per_poll_s = extra_pct / 100 * POLL_HOSTS_S
        print(f"server CPU per /api/hosts request (sparklines' share included): "
              f"{per_request_ms:.1f} ms; per poll of {a.pages} pages: {per_poll_s:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
