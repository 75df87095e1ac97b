"""``python -m bench [--quick] [--scenarios a,b] [--burst-size N] [--reps N] [--json PATH]``:
run the benchmarks, print the table, write the JSON. Everything it starts (database, Redis claim,
processes, fake providers) it also removes, whatever happens."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import tempfile
import time
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from aftercare.runtime import Runtime, set_runtime
from aftercare.storage.migrate import upgrade
from bench.context import Bench, daytime_zone
from bench.infra import REPO, MachineLoad, PrivateRedis, Processes, ScratchPostgres, log
from bench.results import Row, markdown, write_json

SCENARIOS = ("enrolment", "dispatch", "delivery", "burst", "memory", "triage")
DEFAULT_JSON = REPO / "bench" / "results" / "latest.json"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="one repetition of smaller loads (< 2 minutes)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="repetitions of each scenario (default: 3; quick: 1); fewer for an A/B only",
    )
    parser.add_argument(
        "--burst-size",
        type=int,
        default=None,
        help="reminders due at once in the burst scenario (default: 100,000; quick: 1,000)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        parser.error(f"--scenarios: unknown {', '.join(unknown) or '(none)'}")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps: at least 1")
    if args.burst_size is not None and args.burst_size < 1:
        parser.error("--burst-size: at least 1")
    args.chosen = chosen
    return args


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gb() -> float:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return round(pages / 2**30, 1)


def _versions(bench: Bench) -> dict[str, str]:
    out = {"python": platform.python_version(), "postgresql": bench.pg.server_version()}
    out["redis_server"] = str(bench.redis.client().info("server").get("redis_version", "?"))
    for package in ("aftercare", "celery", "kombu", "redis", "sqlalchemy", "psycopg", "twilio"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "?"
    return out


def _run_scenarios(bench: Bench, chosen: list[str]) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    seconds: dict[str, Any] = {}
    for name in chosen:
        module: Any = importlib.import_module(f"bench.scenarios.{name}")
        started = time.monotonic()
        log(f"scenario {name}: start")
        load = MachineLoad()
        try:
            with load:
                rows += module.run(bench)
        except Exception as exc:
            # A broken scenario is reported in the table; the others still run.
            traceback.print_exc()
            rows.append(Row(name, "scenario failed", "", None, note=f"error: {exc}"[:200]))
            bench.raw.setdefault("errors", {})[name] = traceback.format_exc()
        finally:
            bench.procs.stop_all()
        seconds[name] = {"seconds": round(time.monotonic() - started, 1), **load.as_dict()}
        log(f"scenario {name}: {seconds[name]}")
    return rows, seconds


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="aftercare-bench-"))
    pg = ScratchPostgres()
    redis = PrivateRedis()
    procs = Processes(logs=scratch / "logs")
    rt: Runtime | None = None
    pg.create()
    try:
        redis.claim()
        log(f"scratch database {pg.name}, Redis db {redis.number}, files in {scratch}")
        upgrade(pg.url)
        bench = Bench(
            quick=args.quick,
            reps=args.reps or (1 if args.quick else 3),
            pg=pg,
            redis=redis,
            scratch=scratch,
            procs=procs,
            zone=daytime_zone(),
            burst_size=args.burst_size,
        )
        rt = Runtime(bench.settings())
        bench.rt = rt
        # The in-process Celery app (publish_send) reads its configuration from this runtime.
        set_runtime(rt)
        rows, seconds = _run_scenarios(bench, args.chosen)
        meta = {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full",
            "repetitions": bench.reps,
            "scenarios": args.chosen,
            "per_scenario": seconds,  # duration, and how busy the machine was
            "total_seconds": round(time.monotonic() - started, 1),
            "machine": {
                "cpus": os.cpu_count(),
                "cpu": _cpu(),
                "memory_gb": _memory_gb(),
                "kernel": platform.release(),
            },
            "versions": _versions(bench),
            "patient_zone": bench.zone,
        }
    finally:
        procs.stop_all()
        if rt is not None:
            rt.db.dispose()
        set_runtime(None)
        redis.release()
        pg.drop()
        logs = args.json.parent / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        if (scratch / "logs").exists():
            shutil.copytree(scratch / "logs", logs)
        shutil.rmtree(scratch, ignore_errors=True)
    write_json(args.json, meta=meta, rows=rows, raw=bench.raw)
    print(markdown(rows))
    for name, info in meta["per_scenario"].items():
        print(
            f"- {name}: {info['seconds']} s; machine CPU busy {info['machine_cpu_busy']:.0%}, "
            f"of which this run's processes {info['own_processes_cpu']:.0%} "
            f"(+ PostgreSQL/Redis); load average {info['loadavg_before']} -> "
            f"{info['loadavg_after']}"
        )
    print(
        f"\n{meta['mode']} run, {bench.reps} repetition(s), {meta['total_seconds']} s; "
        f"JSON: {args.json}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
