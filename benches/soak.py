#!/usr/bin/env python3
"""Soak (issue 24): `tributary serve` under a steady produce rate, a dashboard's query load and a
batch run every few minutes, watched from the outside.

It starts its own tansu broker and the release binary's `serve` (every role, a lake in a temporary
directory) and `gen` as separate processes, then for `--minutes`:

- `tributary gen --rate R` sends the clickstream to Kafka;
- `--qps` queries per second (open loop: each is due at a fixed time, and its latency counts from
  then, so a slow answer delays none of the next ones) cycle through four dashboard queries;
- every second it samples the serving process's RSS and the speed layer's lag per partition.

When the generator is done it waits until the archiver and the speed layer hold every offset, then
checks the answers against ground truth: DuckDB's exact count, sum, min and max per (page, country)
over the raw Parquet files of the lake (the master dataset), and the merged answer before and after
one more batch run (which moves the seam over the same events) must be equal in every metric.

Prints a Markdown summary (RSS, p50/p99 per window, lag, checks) and writes every sample to
`soak.json` in the work directory. Exits non-zero when a check fails.

    cargo build --release --bin tributary
    python3 benches/soak.py --minutes 30 --rate 10000 --qps 20 --batch-interval 5m

The rate: tansu 0.6 on this 2-core machine takes ~28k/s from one producer with nothing reading;
with every role reading and the query load it sent 13.4k/s of 15k/s asked, and the speed layer
trailed; 10k/s is ~75% of that (BENCHMARKS.md, Soak).

DuckDB comes from PyPI into a virtualenv of its own under target/ (created on first use).
"""

import argparse
import concurrent.futures
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DUCKDB_VERSION = "1.5.6"

QUERIES = [
    # The dashboard's time series: per minute over the last hour.
    {"view": "pageviews", "granularity": "1m", "metrics": ["views", "users", "latency_p95"],
     "order_by": [{"field": "time", "desc": True}], "limit": 60},
    # A breakdown: per hour and country.
    {"view": "pageviews", "granularity": "1h", "group_by": ["country"],
     "metrics": ["views", "users", "latency_avg"]},
    # Headline totals.
    {"view": "pageviews", "granularity": "all", "metrics": ["views", "users", "latency_p95"]},
    {"view": "traffic", "granularity": "1d", "group_by": ["device"],
     "metrics": ["events", "sessions", "latency_p99"]},
]

# The exactness check: every metric of pageviews per (page, country) over all time.
TRUTH_QUERY = {"view": "pageviews", "granularity": "all", "group_by": ["page", "country"],
               "metrics": ["views", "users", "latency_sum", "latency_min", "latency_max",
                           "latency_avg", "latency_p95"], "limit": 100000}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def duckdb_python():
    """A python with duckdb, in a virtualenv of its own (installed on first use)."""
    venv = ROOT / "target" / "soak-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import duckdb"], capture_output=True)
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"duckdb=={DUCKDB_VERSION}"],
                       check=True)
    return str(python)


def http(base, method, path, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        return None, {"error": str(error)}


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def percentile(values, q):
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class Processes:
    """Children in process groups of their own, stopped (TERM, then KILL) on exit."""

    def __init__(self):
        self.children = []

    def start(self, args, cwd, env, log):
        child = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append(child)
        return child

    def stop(self, child, timeout=60):
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()

    def stop_all(self):
        for child in reversed(self.children):
            self.stop(child)


def wait_until(what, check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise SystemExit(f"soak: {what} did not happen within {timeout} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=int, default=10000, help="events/s the generator sends")
    parser.add_argument("--qps", type=float, default=20)
    parser.add_argument("--batch-interval", default="5m")
    parser.add_argument("--window", type=float, default=5, help="minutes per reported window")
    parser.add_argument("--binary", default=str(ROOT / "target" / "release" / "tributary"))
    parser.add_argument("--tansu", default=os.environ.get("TANSU_BIN",
                        str(Path.home() / ".cargo" / "bin" / "tansu")))
    args = parser.parse_args()
    for tool in (args.binary, args.tansu):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"soak: {tool} is missing (cargo build --release --bin tributary; "
                             "scripts/setup installs tansu)")
    python = duckdb_python()

    work = Path(tempfile.mkdtemp(prefix="tributary-soak-"))
    print(f"soak: work directory {work}", flush=True)
    (work / "tansu").mkdir()
    broker_port, http_port = free_port(), free_port()
    broker = f"127.0.0.1:{broker_port}"
    base = f"http://127.0.0.1:{http_port}"
    env = dict(os.environ,
               TRIBUTARY_KAFKA__BROKERS=broker,
               TRIBUTARY_LAKE__URL=str(work / "lake"),
               TRIBUTARY_SERVING__LISTEN=f"127.0.0.1:{http_port}",
               TRIBUTARY_BATCH__INTERVAL=args.batch_interval,
               RUST_LOG=os.environ.get("RUST_LOG", "info"))
    env.pop("STORAGE_ENGINE", None)
    processes = Processes()
    try:
        url = f"tcp://{broker}"
        # tansu logs every request at info: 37 GB in 10 minutes at 6k/s, which is most of what
        # the broker then does. Warnings only.
        processes.start([args.tansu, "broker", "--listener-url", url, "--advertised-listener-url",
                         url, "--storage-engine", "sqlite://tansu.db", "--cluster-id", "soak"],
                        work / "tansu", dict(env, RUST_LOG="warn"), open(work / "tansu.log", "w"))
        wait_until("the broker listening", lambda: socket.socket().connect_ex(
            ("127.0.0.1", broker_port)) == 0, 60)
        for topic, partitions in (("events", 3), ("events.dlq", 1)):
            subprocess.run([args.tansu, "topic", "create", topic, "--broker", url,
                            "--partitions", str(partitions)], check=True, env=env,
                           capture_output=True)
        serve = processes.start([args.binary, "serve"], work, env, open(work / "serve.log", "w"))
        wait_until("serve ready", lambda: http(base, "GET", "/readyz")[0] == 200, 120)
        count = int(args.rate * args.minutes * 60)
        started = time.monotonic()
        gen = processes.start([args.binary, "gen", "--rate", str(args.rate), "--count",
                               str(count)], work, env, open(work / "gen.log", "w"))

        samples, answers = [], []
        lock = threading.Lock()
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                t = time.monotonic() - started
                code, status = http(base, "GET", "/v1/status")
                lags = [p["lag"] for p in status["speed"]["partitions"]] if code == 200 else []
                samples.append({"t": t, "rss_mb": rss_mb(serve.pid), "lag": max(lags, default=None),
                                "ready": status["speed"]["ready"] if code == 200 else None,
                                "stalls": status["speed"]["stalls"] if code == 200 else None,
                                "versions": [v["version"] for v in status["batch"]["views"]]
                                if code == 200 else None})
                stop.wait(1.0)

        def ask(n, due):
            code, reply = http(base, "POST", "/v1/query", QUERIES[n % len(QUERIES)])
            done = time.monotonic()
            with lock:
                answers.append({"t": due - started, "latency_ms": (done - due) * 1e3,
                                "status": code,
                                "complete": (reply or {}).get("meta", {}).get("complete")})

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            n = 0
            while gen.poll() is None:
                due = started + n / args.qps
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                pool.submit(ask, n, due)
                n += 1
        produced_in = time.monotonic() - started
        if gen.returncode != 0:
            raise SystemExit(f"soak: gen failed ({gen.returncode}); see {work / 'gen.log'}")
        print(f"soak: gen sent {count} events in {produced_in:.0f} s "
              f"({count / produced_in:.0f}/s)", flush=True)

        def settled():
            code, status = http(base, "GET", "/v1/status")
            if code != 200:
                return False
            # `progress` is what the raw files hold (the next offset per partition); the
            # `archived` counter also counts events still buffered for the next file.
            written = sum(status["archiver"]["progress"].values())
            read = sum(p["next"] for p in status["speed"]["partitions"])
            return written >= count and read >= count and status["speed"]["complete"]

        wait_until("the archiver and speed layer holding every offset", settled, 900)
        settled_in = time.monotonic() - started - produced_in
        stop.set()
        sampler.join()
        checks = final_checks(base, python, work)
        report(args, count, produced_in, settled_in, samples, answers, checks)
        with open(work / "soak.json", "w") as out:
            json.dump({"args": vars(args), "samples": samples, "answers": answers,
                       "checks": checks}, out)
        if not all(c["ok"] for c in checks):
            sys.exit(1)
    finally:
        processes.stop_all()


def final_checks(base, python, work):
    checks = []
    code, merged = http(base, "POST", "/v1/query", TRUTH_QUERY, timeout=120)
    assert code == 200, merged
    assert merged["meta"]["complete"], merged["meta"]
    code, status = http(base, "GET", "/v1/status")
    quarantined = status["archiver"]["quarantined"]
    raw = str(work / "lake" / "raw" / "events" / "**" / "*.parquet")
    script = f"""
import duckdb, json
rows = duckdb.sql('''SELECT page, country, count(*)::BIGINT, sum(latency_ms), min(latency_ms),
    max(latency_ms) FROM read_parquet('{raw}') WHERE page IS NOT NULL GROUP BY ALL''').fetchall()
total = duckdb.sql("SELECT count(*) FROM read_parquet('{raw}')").fetchone()[0]
print(json.dumps({{"rows": rows, "total": total}}))
"""
    truth = json.loads(subprocess.run([python, "-c", script], capture_output=True, check=True,
                                      text=True).stdout)
    got = {(r["page"], r["country"]): r for r in merged["rows"]}
    wrong = []
    for page, country, views, total, low, high in truth["rows"]:
        row = got.pop((page, country), None)
        if (row is None or row["views"] != views or row["latency_min"] != low
                or row["latency_max"] != high
                or not math.isclose(row["latency_sum"], total, rel_tol=1e-9)):
            wrong.append(((page, country), row, (views, total, low, high)))
    checks.append({"check": "pageviews per (page, country) = DuckDB over the raw lake "
                   "(count, sum, min, max)", "ok": not wrong and not got,
                   "detail": f"{len(truth['rows'])} groups, {len(wrong)} differ, "
                             f"{len(got)} only in Tributary; first: {wrong[:1]}"})
    checks.append({"check": "raw rows + quarantined = events sent",
                   "ok": truth["total"] + quarantined == sum(
                       p["next"] for p in status["speed"]["partitions"]),
                   "detail": f"{truth['total']} raw + {quarantined} quarantined"})
    code, ran = http(base, "POST", "/v1/batch/run", timeout=900)
    checks.append({"check": "a batch run after the load", "ok": code == 200, "detail": str(ran)[:200]})
    code, after = http(base, "POST", "/v1/query", TRUTH_QUERY, timeout=120)
    moved = [(a, b) for a, b in zip(merged["rows"], after["rows"] if code == 200 else [])
             if not same_row(a, b)]
    checks.append({"check": "every metric equal before and after the seam moves (floats to 1e-9)",
                   "ok": code == 200 and len(after["rows"]) == len(merged["rows"]) and not moved,
                   "detail": f"{len(moved)} rows differ, first: {moved[:1]}; "
                             f"batch version now {after.get('meta', {}).get('batch')}"[:400]})
    return checks


def same_row(a, b):
    """Equal, except that float sums may differ in the last bits: the seam moving changes the order
    in which they are added (as tests/common does, 1e-9 relative)."""
    if a.keys() != b.keys():
        return False
    for key, x in a.items():
        y = b[key]
        if isinstance(x, float) and isinstance(y, float):
            if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9):
                return False
        elif x != y:
            return False
    return True


def report(args, count, produced_in, settled_in, samples, answers, checks):
    window = args.window * 60
    warm = next((s["rss_mb"] for s in samples if s["t"] >= window), samples[0]["rss_mb"])
    end = samples[-1]["rss_mb"]
    lags = [s["lag"] for s in samples if s["lag"] is not None]
    not_ready = sum(1 for s in samples if s["ready"] is False)
    print(f"\n### Soak: {args.minutes:g} min, gen --rate {args.rate}, {args.qps:g} q/s, "
          f"batch every {args.batch_interval}\n")
    print(f"- events: {count} sent in {produced_in:.0f} s ({count / produced_in:.0f}/s); "
          f"archiver and speed layer held every offset {settled_in:.1f} s after the last send")
    print(f"- RSS: {samples[0]['rss_mb']:.0f} MB at start, {warm:.0f} MB after the first window, "
          f"{end:.0f} MB at the end ({(end / warm - 1) * 100:+.1f}% once warm)")
    print(f"- speed lag (max over partitions, sampled each second): max {max(lags, default=0)}, "
          f"p99 {percentile(lags, 0.99)}; not ready in {not_ready} of {len(samples)} samples; "
          f"stalls {samples[-1]['stalls']}")
    print("\n| window | queries | errors | incomplete | p50 ms | p99 ms | max ms | RSS MB at end |")
    print("|---|---|---|---|---|---|---|---|")
    for start in range(0, int(max(a["t"] for a in answers)) + 1, int(window)):
        inside = [a for a in answers if start <= a["t"] < start + window]
        if not inside:
            continue
        latencies = [a["latency_ms"] for a in inside]
        errors = sum(1 for a in inside if a["status"] != 200)
        incomplete = sum(1 for a in inside if a["complete"] is False)
        rss = [s["rss_mb"] for s in samples if s["t"] < start + window][-1]
        print(f"| {start / 60:.0f}-{(start + window) / 60:.0f} min | {len(inside)} | {errors} | "
              f"{incomplete} | {statistics.median(latencies):.1f} | "
              f"{percentile(latencies, 0.99):.1f} | {max(latencies):.1f} | {rss:.0f} |")
    print()
    for check in checks:
        print(f"- {'PASS' if check['ok'] else 'FAIL'}: {check['check']} ({check['detail']})")


if __name__ == "__main__":
    main()
