#!/usr/bin/env python3
"""Scaling out (issue 32): the recompute on Ballista and the speed layer split by partitions.

    python3 benches/scale_out.py recompute --lake DIR [--view pageviews] [--rounds 1]
    python3 benches/scale_out.py speed [--events 300000] [--partitions 8] [--queries 200]

Release binary (`cargo build --release`), tansu from `scripts/setup`. It prints Markdown for
BENCHMARKS.md.

**recompute**: on an existing lake (e.g. the 30-day, 30.3M-event lake `benches/batch_vs_duckdb.py
--days 30` leaves behind), `tributary batch run --view V --full` four ways, one after another:
locally with 1 and 2 threads, and on a Ballista cluster of `tributary ballista scheduler` with one
executor of one slot and with two executors of one slot each (scheduler, executors and client all
on this machine). The time is the run's own (its report line), the rate its raw rows over it.

**speed**: one tansu broker, a topic of `--partitions` partitions holding `--events` events
(`tributary gen`). Then:
1. catch-up: one speed node reading every partition, then two speed nodes of half the partitions
   each started together, timed until every partition is read to its end (`/v1/status`);
2. merge cost: the dashboard query (pageviews per minute, views, users and p95, one country)
   `--queries` times against a serving node merging 2 and then 8 speed nodes, and against one
   process reading every partition itself (the speed layer in memory), p50 and p99.
"""

import argparse
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
from soak import Processes, free_port, http, percentile, wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "tributary"
TANSU = os.environ.get("TANSU_BIN", str(Path.home() / ".cargo" / "bin" / "tansu"))
REPORT = re.compile(r"from (\d+) raw rows in (\d+) time slices, ([0-9.]+)s")


def listening(port):
    return socket.socket().connect_ex(("127.0.0.1", port)) == 0


def recompute(args):
    lake = Path(args.lake).resolve()
    work = Path(tempfile.mkdtemp(prefix="tributary-scale-"))
    env = dict(os.environ, TRIBUTARY_LAKE__URL=str(lake), RUST_LOG="warn")
    processes = Processes()

    def run(label, extra):
        times = []
        for _ in range(args.rounds):
            out = subprocess.run([str(BINARY), "batch", "run", "--view", args.view, "--full"],
                                 env=dict(env, **extra), capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{label}: {out.stdout}\n{out.stderr[-3000:]}")
            rows, slices, seconds = REPORT.search(out.stdout).groups()
            times.append(float(seconds))
        seconds = statistics.median(times)
        print(f"{label}: {seconds:.2f} s, {int(rows) / seconds / 1e6:.2f}M rows/s, {slices} slices",
              flush=True)
        return label, int(rows), int(slices), seconds

    def cluster(executors):
        scheduler_port = free_port()
        started = [processes.start([str(BINARY), "ballista", "scheduler", "--bind",
                                    f"127.0.0.1:{scheduler_port}"], work, env,
                                   open(work / "scheduler.log", "a"))]
        wait_until("the scheduler", lambda: listening(scheduler_port), 60)
        for n in range(executors):
            flight, grpc = free_port(), free_port()
            started.append(processes.start(
                [str(BINARY), "ballista", "executor", "--scheduler", f"127.0.0.1:{scheduler_port}",
                 "--bind", f"127.0.0.1:{flight}", "--grpc-port", str(grpc), "--slots", "1"],
                work, env, open(work / f"executor-{n}.log", "a")))
            wait_until("an executor", lambda: listening(flight), 60)
        time.sleep(2)  # registered with the scheduler
        return scheduler_port, started

    results = [run("local, 1 thread", {"TRIBUTARY_BATCH__THREADS": "1"}),
               run("local, 2 threads", {"TRIBUTARY_BATCH__THREADS": "2"})]
    for executors in (1, 2):
        port, started = cluster(executors)
        try:
            results.append(run(f"Ballista, {executors} executor(s) of 1 slot", {
                "TRIBUTARY_BATCH__ENGINE": "ballista",
                "TRIBUTARY_BATCH__BALLISTA_SCHEDULER": f"df://127.0.0.1:{port}",
                "TRIBUTARY_BATCH__THREADS": str(executors)}))
        finally:
            for child in reversed(started):
                processes.stop(child)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.view}, {results[0][1]:,} raw rows, {os.cpu_count()} cores, "
          f"median of {args.rounds}:\n")
    print("| engine | slices | time | rows/s | rows/s per executor or thread | vs local 1 thread |")
    print("|---|---|---|---|---|---|")
    base = results[0][3]
    for label, rows, slices, seconds in results:
        workers = 2 if "2 " in label else 1
        print(f"| {label} | {slices} | {seconds:.2f} s | {rows / seconds / 1e6:.2f}M | "
              f"{rows / seconds / workers / 1e6:.2f}M | {base / seconds:.2f}x |")


QUERY = {"view": "pageviews", "granularity": "1m", "metrics": ["views", "users", "latency_p95"],
         "filter": [{"field": "country", "op": "eq", "value": "DE"}]}


def speed(args):
    work = Path(tempfile.mkdtemp(prefix="tributary-scale-"))
    (work / "tansu").mkdir()
    broker_port = free_port()
    broker = f"127.0.0.1:{broker_port}"
    env = dict(os.environ, TRIBUTARY_KAFKA__BROKERS=broker, TRIBUTARY_LAKE__URL=str(work / "lake"),
               TRIBUTARY_SERVING__PG_LISTEN="", RUST_LOG="warn")
    env.pop("STORAGE_ENGINE", None)
    processes = Processes()
    url = f"tcp://{broker}"
    try:
        processes.start([TANSU, "broker", "--listener-url", url, "--advertised-listener-url", url,
                         "--storage-engine", "sqlite://tansu.db", "--cluster-id", "scale"],
                        work / "tansu", dict(env, RUST_LOG="warn"), open(work / "tansu.log", "w"))
        wait_until("the broker", lambda: listening(broker_port), 60)
        for topic, partitions in (("events", args.partitions), ("events.dlq", 1)):
            subprocess.run([TANSU, "topic", "create", topic, "--broker", url, "--partitions",
                            str(partitions)], check=True, env=env, capture_output=True)
        started = time.monotonic()
        subprocess.run([str(BINARY), "gen", "--rate", "0", "--count", str(args.events)],
                       check=True, env=env, capture_output=True)
        print(f"produced {args.events:,} events in {time.monotonic() - started:.1f} s", flush=True)

        def node(partitions, roles="speed"):
            port = free_port()
            command = [str(BINARY), "serve", "--roles", roles]
            if partitions is not None:
                command += ["--partitions", partitions]
            child = processes.start(command, work, dict(env, TRIBUTARY_SERVING__LISTEN=
                                                        f"127.0.0.1:{port}"),
                                    open(work / f"node-{port}.log", "w"))
            return f"http://127.0.0.1:{port}", child

        def read_all(base, wanted):
            code, status = http(base, "GET", "/v1/status")
            if code != 200:
                return False
            ends = {p["partition"]: p["next"] >= p["high_watermark"] > 0
                    for p in status["speed"]["partitions"]}
            return all(ends.get(p) for p in wanted)

        def catch_up(groups):
            began = time.monotonic()
            nodes = [(node(spec), wanted) for spec, wanted in groups]
            for (base, _), wanted in nodes:
                wait_until("a node to read its partitions", lambda: read_all(base, wanted), 1800)
            took = time.monotonic() - began
            for (_, child), _ in nodes:
                processes.stop(child)
            return took

        every = list(range(args.partitions))
        half = args.partitions // 2
        one = catch_up([(f"0-{args.partitions - 1}", every)])
        two = catch_up([(f"0-{half - 1}", every[:half]),
                        (f"{half}-{args.partitions - 1}", every[half:])])
        print("\n| speed nodes | catch-up of the backlog | events/s |")
        print("|---|---|---|")
        print(f"| 1 (every partition) | {one:.1f} s | {args.events / one / 1e3:.1f}k |")
        print(f"| 2 (half each) | {two:.1f} s | {args.events / two / 1e3:.1f}k |", flush=True)

        def latencies(base):
            for _ in range(5):
                http(base, "POST", "/v1/query", QUERY)
            times = []
            for _ in range(args.queries):
                began = time.monotonic()
                code, reply = http(base, "POST", "/v1/query", QUERY)
                times.append((time.monotonic() - began) * 1e3)
                assert code == 200 and reply["meta"]["complete"], reply
            return statistics.median(times), percentile(times, 0.99)

        rows = []
        whole, whole_child = node(None, "speed,serving")
        wait_until("the single process", lambda: read_all(whole, every), 1800)
        rows.append(("one process reading every partition", *latencies(whole)))
        processes.stop(whole_child)
        for count in (2, 8):
            size = args.partitions // count
            speed_nodes = [node(f"{n * size}-{(n + 1) * size - 1}") for n in range(count)]
            for n, (base, _) in enumerate(speed_nodes):
                wanted = every[n * size:(n + 1) * size]
                wait_until("a speed node", lambda: read_all(base, wanted), 1800)
            port = free_port()
            serving = f"http://127.0.0.1:{port}"
            child = processes.start([str(BINARY), "serve", "--roles", "serving"], work, dict(
                env, TRIBUTARY_SERVING__LISTEN=f"127.0.0.1:{port}",
                TRIBUTARY_SERVING__SPEED_NODES=",".join(b for b, _ in speed_nodes)),
                open(work / f"serving-{count}.log", "w"))
            wait_until("the serving node", lambda: http(serving, "GET", "/readyz")[0] == 200, 300)
            rows.append((f"serving node merging {count} speed nodes", *latencies(serving)))
            processes.stop(child)
            for _, node_child in speed_nodes:
                processes.stop(node_child)
        print(f"\nThe dashboard query, {args.queries} times, {args.events:,} events in the speed "
              "layer:\n")
        print("| answered by | p50 ms | p99 ms |")
        print("|---|---|---|")
        for label, p50, p99 in rows:
            print(f"| {label} | {p50:.1f} | {p99:.1f} |")
    finally:
        processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)  # the broker's log of the backlog: GBs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("recompute")
    r.add_argument("--lake", required=True)
    r.add_argument("--view", default="pageviews")
    r.add_argument("--rounds", type=int, default=1)
    s = sub.add_parser("speed")
    s.add_argument("--events", type=int, default=300_000)
    s.add_argument("--partitions", type=int, default=8)
    s.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    if not os.access(BINARY, os.X_OK):
        raise SystemExit(f"{BINARY} is missing: cargo build --release")
    {"recompute": recompute, "speed": speed}[args.what](args)


if __name__ == "__main__":
    main()
