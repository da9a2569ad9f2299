#!/usr/bin/env python3
"""The batch layer side by side with DuckDB on the same raw Parquet files, in one run (issue 30).

    python3 benches/batch_vs_duckdb.py [--events 10000000] [--days 1] [--threads 1,2] [--work DIR]

One process drives everything, with the release binary (`cargo build --release`) and DuckDB from
PyPI (a virtualenv under target/, as benches/soak.py uses):

1. **Data**: DuckDB writes `--events` clickstream events over `--days` days (100 pages with a
   power-law popularity, 2% without a page, 20 countries, 200k users, log-normal-ish latencies) as
   one Parquet file in event-time order; `tributary backfill` puts them into a fresh lake as raw
   files of 500k rows (decoded by the archiver's decoder, like every event).
2. **Full recompute vs DuckDB**, per thread count, interleaved, median of `--rounds`:
   `tributary batch run --view pageviews --full` (1m x page x country: count, distinct users,
   sum, min, max, avg, p95, and the built-in late count; mergeable states written as sorted
   Parquet parts with a manifest) against the same GROUP BY in DuckDB with `approx_count_distinct`
   and `approx_quantile` (final values only), and without the two sketches, both written to Parquet.
3. **Compaction**: the same events backfilled again as 720 small files (a day of 2-minute files),
   a full recompute over them, the run's compaction (720 files into files of 500k rows), and a
   full recompute over the compacted files.
4. **Incremental**: 1% more events (5% of them up to two days late) backfilled, the incremental
   run (reads only them) and a full run over the same input; then the dashboard query (a per-minute
   series of views, users and p95 over the whole span, one country) against `tributary serve
   --roles speed,serving` (the data's last day per minute), on the extended version and on the full
   one in turn (cold, warm p50 and p99).

It prints a Markdown summary for BENCHMARKS.md.
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import Processes, duckdb_python, free_port, http, percentile, wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "tributary"
DAY_START_MS = 1_795_046_400_000  # 2026-11-18T00:00:00Z

GENERATE = """
import duckdb, sys
out, events, days, first, late_percent, total, day_start = sys.argv[1:8]
con = duckdb.connect()
con.execute("SELECT setseed(0.42)")
con.execute(f'''
COPY (
  SELECT
    ({day_start} + (n * {days} * 86400000) // {total} + (hash(n) % 5000)::BIGINT
      - CASE WHEN hash(n * 7) % 100 < {late_percent}
             THEN (hash(n * 11) % (2 * 86400000))::BIGINT ELSE 0 END)::BIGINT AS ts,
    'user-' || (hash(n * 3) % 200000)::VARCHAR AS user_id,
    's-' || ((hash(n * 3) % 200000) * 7 + n // 40000)::VARCHAR AS session_id,
    CASE WHEN hash(n * 5) % 50 = 0 THEN NULL
         ELSE '/page/' || floor(pow(101, random()) - 1)::INTEGER::VARCHAR END AS page,
    ['google', 'direct', 'news', 'social'][n % 4 + 1] AS referrer,
    'C' || lpad(floor(pow(21, random()) - 1)::INTEGER::VARCHAR, 2, '0') AS country,
    ['mobile', 'desktop', 'tablet'][n % 3 + 1] AS device,
    exp(random() * 6) * 3 AS latency_ms,
    (hash(n * 13) % 100000)::BIGINT AS bytes
  FROM range({first}, {first} + {events}) t(n)
  ORDER BY n
) TO '{out}' (FORMAT parquet)
''')
"""

# The `pageviews` view in DuckDB SQL over the raw files; `late` as the view computes it.
DUCKDB_QUERY = """
import duckdb, sys, time, json
files, out, threads, sketches = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
sketch = "approx_count_distinct(user_id) AS users, approx_quantile(latency_ms, 0.95) AS latency_p95," if sketches else ""
query = f'''
COPY (
  SELECT time_bucket(INTERVAL 1 minute, ts) AS time, page, country,
         count(*) AS views, {sketch}
         sum(latency_ms) AS latency_sum, min(latency_ms) AS latency_min,
         max(latency_ms) AS latency_max, avg(latency_ms) AS latency_avg,
         count(*) FILTER (WHERE epoch_ms(_kafka_ts) - 60000 > epoch_ms(ts)) AS late
  FROM read_parquet('{files}')
  WHERE page IS NOT NULL
  GROUP BY ALL
  ORDER BY time
) TO '{out}' (FORMAT parquet)
'''
started = time.perf_counter()
con.execute(query)
seconds = time.perf_counter() - started
rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
print(json.dumps({"seconds": seconds, "rows": rows}))
"""


def run(args, env, check=True):
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


class Lake:
    """A lake directory and the environment the binary runs over it with."""

    def __init__(self, path, threads=1):
        self.path = Path(path)
        self.env = dict(os.environ)
        self.env.update({
            "TRIBUTARY_LAKE__URL": str(self.path),
            "TRIBUTARY_BATCH__THREADS": str(threads),
            "TRIBUTARY_BATCH__MEMORY_LIMIT_MB": "2048",
            "TRIBUTARY_BATCH__EPOCH_SIZE": "1",
            "TRIBUTARY_BATCH__KEEP_VERSIONS": "10",
            "RUST_LOG": "warn,tributary_batch::recompute=info",
        })
        self.env.pop("TRIBUTARY_CONFIG", None)

    def backfill(self, file, file_rows=500_000):
        env = dict(self.env, TRIBUTARY_ARCHIVER__MAX_FILE_ROWS=str(file_rows))
        started = time.perf_counter()
        out = run([BINARY, "backfill", file], env).stdout
        return time.perf_counter() - started, out.strip()

    def batch_run(self, threads, full, extra_env=None):
        env = dict(self.env, TRIBUTARY_BATCH__THREADS=str(threads), **(extra_env or {}))
        args = [BINARY, "batch", "run", "--view", "pageviews"] + (["--full"] if full else [])
        started = time.perf_counter()
        result = run(args, env)
        wall = time.perf_counter() - started
        match = re.search(r"published version (\d+) \(.* from (\d+) raw rows .*?, ([0-9.]+)s,", result.stdout)
        if not match:
            sys.exit(f"unexpected batch run output:\n{result.stdout}\n{result.stderr}")
        upkeep = re.search(r"raw upkeep: compacted (\d+) small files into (\d+), deleted \d+ past "
                           r"retention \(([0-9.]+)s\)", result.stderr)
        return {
            "version": int(match.group(1)),
            "rows": int(match.group(2)),
            "seconds": float(match.group(3)),
            "wall": wall,
            "upkeep": upkeep and (int(upkeep.group(1)), int(upkeep.group(2)), float(upkeep.group(3))),
        }

    def raw_files(self):
        return sorted(str(p) for p in (self.path / "raw").glob("events@*/partition=*/*.parquet"))


def generate(python, out, events, days, first, late_percent, total):
    run([python, "-c", GENERATE, str(out), str(events), str(days), str(first), str(late_percent),
         str(total), str(DAY_START_MS)], dict(os.environ))


def duckdb_run(python, files_glob, out, threads, sketches):
    result = run([python, "-c", DUCKDB_QUERY, files_glob, str(out), str(threads), "1" if sketches else "0"],
                 dict(os.environ))
    return json.loads(result.stdout.strip().splitlines()[-1])


def day_iso(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def dashboard(lake, work, versions, queries, days):
    """Cold and warm latencies of the dashboard query on each of `versions` (made live in turn),
    from `serve --roles speed,serving` over the lake (and an empty topic on a tansu broker)."""
    tansu = os.environ.get("TANSU_BIN", str(Path.home() / ".cargo" / "bin" / "tansu"))
    if not os.access(tansu, os.X_OK):
        sys.exit(f"{tansu} is missing (scripts/setup installs it)")
    port, broker_port = free_port(), free_port()
    broker = f"127.0.0.1:{broker_port}"
    env = dict(lake.env, TRIBUTARY_SERVING__LISTEN=f"127.0.0.1:{port}",
               TRIBUTARY_KAFKA__BROKERS=broker,
               TRIBUTARY_SERVING__PG_LISTEN="", TRIBUTARY_SERVING__REFRESH="200ms",
               TRIBUTARY_SERVING__MEMORY_BUDGET_MB="4096", RUST_LOG="warn")
    base = f"http://127.0.0.1:{port}"
    # The last day of the data, per minute: what a dashboard shows.
    last_day = DAY_START_MS + (days - 1) * 86_400_000
    query = {"view": "pageviews", "granularity": "1m", "metrics": ["views", "users", "latency_p95"],
             "from": day_iso(last_day), "to": day_iso(last_day + 86_400_000),
             "filter": [{"field": "country", "op": "eq", "value": "C01"}], "limit": 100000}
    processes = Processes()
    results = {}
    broker_dir = work / "tansu"
    shutil.rmtree(broker_dir, ignore_errors=True)
    broker_dir.mkdir()
    try:
        url = f"tcp://{broker}"
        processes.start([tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
                         "--storage-engine", "sqlite://tansu.db", "--cluster-id", "bench"],
                        broker_dir, dict(os.environ, RUST_LOG="warn"), open(work / "tansu.log", "w"))
        wait_until("the broker", lambda: socket.socket().connect_ex(("127.0.0.1", broker_port)) == 0, 60)
        subprocess.run([tansu, "topic", "create", "events", "--broker", url, "--partitions", "3"],
                       check=True, capture_output=True)
        processes.start([BINARY, "serve", "--roles", "speed,serving"], work, env,
                        open(work / "serve.log", "w"))
        wait_until("the server", lambda: http(base, "GET", "/livez")[0] == 200, 60)
        for version in versions:
            run([BINARY, "batch", "rollback", "pageviews", str(version)], lake.env)
            wait_until(f"version {version} live",
                       lambda: (http(base, "POST", "/v1/query", query)[1] or {}).get("meta", {})
                       .get("batch", {}).get("version") == version, 120)
            # The wait's queries warmed it; restart the clock on a fresh shape for the cold figure.
            cold_query = dict(query, filter=[{"field": "country", "op": "eq", "value": "C02"}])
            started = time.perf_counter()
            status, _ = http(base, "POST", "/v1/query", cold_query, timeout=120)
            cold = (time.perf_counter() - started) * 1000
            assert status == 200, status
            times = []
            for _ in range(queries):
                started = time.perf_counter()
                status, answer = http(base, "POST", "/v1/query", query, timeout=120)
                times.append((time.perf_counter() - started) * 1000)
                assert status == 200, answer
            results.setdefault(version, []).append(
                {"cold": cold, "p50": percentile(times, 0.5), "p99": percentile(times, 0.99),
                 "rows": len(answer["rows"])})
    finally:
        processes.stop_all()
    return results


class Summary(list):
    """The Markdown summary, printed as it grows (a failed phase keeps what came before)."""

    def append(self, line):
        super().append(line)
        print(f">> {line}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--work", help="working directory (default: a temporary one, removed)")
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: full,compaction,incremental")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if not BINARY.exists():
        sys.exit(f"{BINARY} is missing: run `cargo build --release` first")
    python = duckdb_python()
    work = Path(args.work or tempfile.mkdtemp(prefix="tributary-vs-duckdb-"))
    work.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    try:
        events_file = work / "events.parquet"
        if not events_file.exists():
            started = time.perf_counter()
            generate(python, events_file, args.events, args.days, 0, 0, args.events)
            print(f"generated {args.events} events in {time.perf_counter() - started:.1f}s", flush=True)

        lake = Lake(work / "lake")
        if not lake.raw_files() and "full" not in skip:
            seconds, out = lake.backfill(events_file)
            print(f"backfill: {seconds:.1f}s ({args.events / seconds / 1e6:.2f}M events/s): {out}", flush=True)
            summary.append(f"- backfill of {args.events:,} events (Parquet → JSON → decoder → raw files): "
                           f"{seconds:.1f} s, {args.events / seconds / 1e6:.2f}M events/s")
        files_glob = str(lake.path / "raw" / "events@1" / "partition=0" / "*.parquet")

        if "full" not in skip:
            summary.append("")
            summary.append(f"| threads | tributary batch run | DuckDB, sketches | DuckDB, no sketches | "
                           f"tributary / DuckDB sketches | tributary / DuckDB no sketches |")
            summary.append("|---|---|---|---|---|---|")
            for threads in [int(t) for t in args.threads.split(",")]:
                ours, sketched, plain = [], [], []
                for round_ in range(args.rounds):
                    ours.append(lake.batch_run(threads, full=True)["seconds"])
                    sketched.append(duckdb_run(python, files_glob, work / "duck.parquet", threads, True)["seconds"])
                    plain.append(duckdb_run(python, files_glob, work / "duck.parquet", threads, False)["seconds"])
                    print(f"threads {threads} round {round_}: tributary {ours[-1]:.2f}s, duckdb sketches "
                          f"{sketched[-1]:.2f}s, no sketches {plain[-1]:.2f}s", flush=True)
                o, s, p = (statistics.median(x) for x in (ours, sketched, plain))
                rate = lambda t: f"{t:.2f} s ({args.events / t / 1e6:.2f}M rows/s)"  # noqa: E731
                summary.append(f"| {threads} | {rate(o)} | {rate(s)} | {rate(p)} | **{o / s:.2f}x** | {o / p:.2f}x |")

        if "compaction" not in skip:
            small = Lake(work / "lake-small")
            if small.path.exists():
                shutil.rmtree(small.path)
            per_file = -(-args.events // (720 * args.days))
            seconds, _ = small.backfill(events_file, file_rows=per_file)
            before = len(small.raw_files())
            uncompacted = small.batch_run(1, full=True)
            after = len(small.raw_files())
            compacted = small.batch_run(1, full=True)
            files, into, upkeep_seconds = uncompacted["upkeep"] or (0, 0, 0.0)
            summary.append("")
            summary.append(f"Compaction: {before} raw files of ≤ {per_file:,} rows (720 a day), one thread:")
            summary.append(f"- full recompute over the small files: {uncompacted['seconds']:.2f} s")
            summary.append(f"- the run's compaction: {files} files into {into} in {upkeep_seconds:.2f} s "
                           f"({after} files after)")
            summary.append(f"- full recompute over the compacted files: {compacted['seconds']:.2f} s")

        if "incremental" not in skip:
            # A lake of its own: the same events, no versions, nothing backfilled since.
            lake = Lake(work / "lake-incremental")
            shutil.rmtree(lake.path, ignore_errors=True)
            lake.backfill(events_file)
            live = lake.batch_run(1, full=True)
            extra = args.events // 100
            more = work / "more.parquet"
            generate(python, more, extra, args.days, args.events, 5, args.events)
            lake.backfill(more)
            incremental = lake.batch_run(1, full=False)
            full = lake.batch_run(1, full=True)
            summary.append("")
            summary.append(f"Incremental, one thread: live version {live['version']} (full, {live['seconds']:.2f} s); "
                           f"+{extra:,} events (5% up to two days late) backfilled:")
            summary.append(f"- incremental run: {incremental['seconds']:.2f} s ({incremental['rows']:,} rows read), "
                           f"version {incremental['version']}")
            summary.append(f"- full run over the same input: {full['seconds']:.2f} s ({full['rows']:,} rows read), "
                           f"version {full['version']}")
            summary.append(f"- incremental / full: **{100 * incremental['seconds'] / full['seconds']:.1f}%**")
            latencies = dashboard(lake, work, [incremental["version"], full["version"],
                                               incremental["version"], full["version"]], args.queries,
                                  args.days)
            summary.append("")
            summary.append("| version | cold ms | warm p50 ms | warm p99 ms | rows |")
            summary.append("|---|---|---|---|---|")
            for version, kind in ((incremental["version"], "extended (base + delta parts)"),
                                  (full["version"], "full")):
                for r in latencies[version]:
                    summary.append(f"| {version} {kind} | {r['cold']:.1f} | {r['p50']:.1f} | "
                                   f"**{r['p99']:.1f}** | {r['rows']} |")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
