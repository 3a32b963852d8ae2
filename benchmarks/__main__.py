"""Run every benchmark: ``python -m benchmarks [NAME ...]``."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import sys
import time
import traceback

import benchmarks


def main(argv: list[str]) -> int:
    names = sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )
    chosen = [n for n in names if not argv or any(a in n for a in argv)]
    failed: list[str] = []
    for name in chosen:
        module = importlib.import_module(f"benchmarks.{name}")
        print(
            f"== {name}: {module.__doc__.strip().splitlines()[0] if module.__doc__ else ''}",
            flush=True,
        )
        t0 = time.perf_counter()
        try:
            asyncio.run(module.run())
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        print(f"   ({time.perf_counter() - t0:.1f} s)\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
