"""Run a command in a fresh process tree and measure its wall time and peak memory (benchmarks only).

``rss_mib`` is the peak of the *sum* of RSS over the command's whole process tree, sampled from
/proc every ``interval`` seconds, so worker and writer processes count; ``largest_mib`` is
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of the wrapper, the largest single process; ``procs`` the
most processes seen at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

_WRAPPER = textwrap.dedent("""
    import json, os, resource, subprocess, sys, time

    def tree_rss(root):
        kids, rss = {}, {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{d}/statm") as f:
                    rss[int(d)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
        todo, total, n = [root], 0, 0
        while todo:
            p = todo.pop()
            total += rss.get(p, 0)
            n += p in rss
            todo.extend(kids.get(p, []))
        return total, n

    interval = float(sys.argv[1])
    t = time.perf_counter()
    p = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = procs = 0
    while p.poll() is None:
        total, n = tree_rss(p.pid)
        peak, procs = max(peak, total), max(procs, n)
        time.sleep(interval)
    dt = time.perf_counter() - t
    err = p.stderr.read()
    if p.returncode:
        sys.stderr.write(err[-3000:])
        sys.exit(p.returncode)
    print(json.dumps({"seconds": dt, "rss_mib": peak / 2**20, "procs": procs,
                      "largest_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
""")


def measure_tree(cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 interval: float = 0.02) -> dict[str, float]:
    """Run ``cmd`` under a fresh wrapper process; ``seconds``, ``rss_mib``, ``largest_mib``, ``procs``."""
    out = subprocess.run([sys.executable, "-c", _WRAPPER, str(interval), *cmd], capture_output=True, text=True,
                         env=env, cwd=None if cwd is None else str(cwd))
    if out.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])
