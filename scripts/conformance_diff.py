#!/usr/bin/env python3
"""Compare two result folders of the official MCP conformance suite, check by check.

Usage:
  conformance_diff.py DIRECT VIA [--name TEXT] [--json FILE] [--known FILE] [--quiet]
      DIRECT: `conformance server ... -o DIRECT` run straight against an upstream server
      VIA:    the same run through the gateway in front of that server
  conformance_diff.py --summary DIR
      per-scenario counts of one run
  conformance_diff.py --baseline DIR
      an --expected-failures YAML (every scenario with a FAILURE or WARNING check)

Layout read: the suite writes one folder per scenario run, `<kind>-<scenario>-<timestamp>`
(kind `server` or `client`, timestamp like 2026-01-02T03-04-05-678Z), each holding `checks.json`:
a list of {id, name, status, errorMessage?, ...}. Statuses SUCCESS, WARNING and FAILURE are
compared; INFO and SKIPPED are ignored. If a scenario ran more than once into the same folder,
the newest run counts.

A check is keyed by (scenario, check id); one id can occur several times in a scenario, so the
number of SUCCESS / WARNING / FAILURE results per key is compared:
  REGRESSION  more FAILURE (or more FAILURE+WARNING) results through the gateway than direct; a
              check that passed direct and is missing through the gateway; a check that fails
              only through the gateway. Exit code 1 when there is any.
  improved    fewer failures through the gateway (worth a look: a gateway answering on its own
              can hide the upstream's behaviour)
  missing     a check that did not pass direct and is absent through the gateway, or that passes
              only through the gateway (informational)
  known       a regression listed in the --known FILE (lines `scenario :: check-id`, `#` starts a
              comment): reported, not counted; a listed check of a scenario in this run that
              does not regress is reported as unused (remove it once no run needs it)
Prints one table row per scenario ("-" = the scenario did not run; 0/0/0 = it ran but reported no
scored check, which the suite counts as a pass), then the details of every regression.
Standard library only; exit code 2 on bad usage or an empty/missing result folder.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

SCORED = ("SUCCESS", "WARNING", "FAILURE")
RUN_DIR = re.compile(r"^(?:server|client)-(?P<scenario>.+)-(?P<ts>\d{4}-\d{2}-\d{2}T[\d-]+Z)$")


class Counts:
    __slots__ = ("ok", "warn", "fail", "message")

    def __init__(self) -> None:
        self.ok = self.warn = self.fail = 0
        self.message = ""

    def add(self, status: str, message: str) -> None:
        if status == "SUCCESS":
            self.ok += 1
        elif status == "WARNING":
            self.warn += 1
            self.message = self.message or message
        else:
            self.fail += 1
            self.message = message or self.message

    def worst(self) -> str:
        return "FAILURE" if self.fail else "WARNING" if self.warn else "SUCCESS"

    def short(self) -> str:
        return f"{self.ok}/{self.warn}/{self.fail}"


def load(root: str) -> dict[str, dict[str, Counts]]:
    """{scenario: {check id: Counts}} for one result folder (newest run per scenario)."""
    path = Path(root)
    if not path.is_dir():
        raise SystemExit(f"conformance_diff: {root}: not a directory")
    newest: dict[str, tuple[str, Path]] = {}
    for checks in path.glob("*/checks.json"):
        m = RUN_DIR.match(checks.parent.name)
        scenario, ts = (m.group("scenario"), m.group("ts")) if m else (checks.parent.name, "")
        if scenario not in newest or ts > newest[scenario][0]:
            newest[scenario] = (ts, checks)
    out: dict[str, dict[str, Counts]] = {}
    for scenario, (_, checks) in sorted(newest.items()):
        per: dict[str, Counts] = defaultdict(Counts)
        try:
            items = json.loads(checks.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            items = [{"id": "(unreadable checks.json)", "status": "FAILURE", "errorMessage": str(e)}]
        for c in items if isinstance(items, list) else []:
            status = c.get("status")
            if status in SCORED:
                message = " ".join(str(c.get("errorMessage") or "").split())[:300]
                per[str(c.get("id") or c.get("name") or "?")].add(status, message)
        out[scenario] = dict(per)
    return out


def totals(checks: dict[str, Counts]) -> Counts:
    t = Counts()
    for c in checks.values():
        t.ok, t.warn, t.fail = t.ok + c.ok, t.warn + c.warn, t.fail + c.fail
    return t


def compare(direct: dict[str, Counts], via: dict[str, Counts]) -> list[tuple[str, str, str]]:
    """[(kind, check id, detail)] for one scenario; kind is REGRESSION, improved or missing."""
    found = []
    for cid in sorted(set(direct) | set(via)):
        d, v = direct.get(cid), via.get(cid)
        if v is None:
            assert d is not None
            if d.ok:
                found.append(("REGRESSION", cid, f"passed direct ({d.short()}), absent through the gateway"))
            else:
                found.append(("missing", cid, f"absent through the gateway (direct {d.worst()})"))
        elif d is None:
            if v.fail or v.warn:
                found.append(("REGRESSION", cid, f"only through the gateway, {v.worst()}: {v.message}"))
            else:
                found.append(("missing", cid, "only through the gateway (passes)"))
        elif v.fail > d.fail or (v.fail + v.warn) > (d.fail + d.warn):
            found.append(("REGRESSION", cid, f"direct {d.short()} -> gateway {v.short()} (ok/warn/fail): {v.message}"))
        elif v.fail < d.fail or (v.fail + v.warn) < (d.fail + d.warn):
            found.append(("improved", cid, f"direct {d.short()} -> gateway {v.short()} (ok/warn/fail): {d.message}"))
    return found


def load_known(path: str | None) -> set[tuple[str, str]]:
    known: set[tuple[str, str]] = set()
    if not path:
        return known
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "::" in line:
            scenario, check = (x.strip() for x in line.split("::", 1))
            known.add((scenario, check))
    return known


def cmd_diff(args: argparse.Namespace) -> int:
    direct, via = load(args.direct), load(args.via)
    known = load_known(args.known)
    used: set[tuple[str, str]] = set()
    if not direct:
        print(f"conformance_diff: no */checks.json under {args.direct}", file=sys.stderr)
        return 2
    name = args.name or f"{args.direct} vs {args.via}"
    rows, details, report = [], [], {"name": name, "scenarios": {}}
    n_reg = n_imp = n_mis = 0
    for scenario in sorted(set(direct) | set(via)):
        d, v = direct.get(scenario, {}), via.get(scenario, {})
        found = []
        for kind, cid, text in compare(d, v):
            if kind == "REGRESSION" and (scenario, cid) in known:
                used.add((scenario, cid))
                kind = "known"
            found.append((kind, cid, text))
        kn = [f for f in found if f[0] == "known"]
        reg = [f for f in found if f[0] == "REGRESSION"]
        imp = [f for f in found if f[0] == "improved"]
        mis = [f for f in found if f[0] == "missing"]
        n_reg, n_imp, n_mis = n_reg + len(reg), n_imp + len(imp), n_mis + len(mis)
        if scenario not in via:
            verdict = "REGRESSION (not run through the gateway)" if reg else "not run through the gateway"
        elif scenario not in direct:
            verdict = "REGRESSION (only through the gateway)" if reg else "only through the gateway"
        else:
            verdict = ", ".join(p for p in (f"REGRESSION x{len(reg)}" if reg else "",
                                            f"known regression x{len(kn)}" if kn else "",
                                            f"improved x{len(imp)}" if imp else "",
                                            f"missing x{len(mis)}" if mis else "") if p) or "same"
        dt, vt = totals(d), totals(v)
        rows.append((scenario, dt.short() if scenario in direct else "-", vt.short() if scenario in via else "-",
                     verdict))
        details += [(scenario, *f) for f in found if f[0] in ("REGRESSION", "known") or not args.quiet]
        report["scenarios"][scenario] = {
            "direct": {"ok": dt.ok, "warn": dt.warn, "fail": dt.fail} if scenario in direct else None,
            "via": {"ok": vt.ok, "warn": vt.warn, "fail": vt.fail} if scenario in via else None,
            "findings": [{"kind": k, "check": c, "detail": t} for k, c, t in found],
        }

    width = max([len(r[0]) for r in rows] + [8])
    print(f"== {name}")
    print(f"   {'scenario':<{width}}  {'direct':>9}  {'gateway':>9}  verdict      (counts: ok/warn/fail)")
    for scenario, dcol, vcol, verdict in rows:
        print(f"   {scenario:<{width}}  {dcol:>9}  {vcol:>9}  {verdict}")
    for scenario, kind, cid, text in details:
        print(f"   {kind:<10} {scenario} :: {cid}: {text}")
    stale = sorted(k for k in known - used if k[0] in direct or k[0] in via)
    for scenario, cid in stale:
        print(f"   unused     {scenario} :: {cid}: listed as a known regression, not regressing in this run")
    dt = totals({f"{s}/{c}": x for s, cs in direct.items() for c, x in cs.items()})
    vt = totals({f"{s}/{c}": x for s, cs in via.items() for c, x in cs.items()})
    print(f"   checks ok/warn/fail: direct {dt.short()}, via gateway {vt.short()}; "
          f"{n_reg} regressions, {len(used)} known, {n_imp} improved, {n_mis} missing")
    report.update(regressions=n_reg, known=len(used), improved=n_imp, missing=n_mis,
                  unused_known=[f"{a} :: {b}" for a, b in stale])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if n_reg else 0


def cmd_summary(root: str) -> int:
    runs = load(root)
    if not runs:
        print(f"conformance_diff: no */checks.json under {root}", file=sys.stderr)
        return 2
    width = max(len(s) for s in runs)
    failing = 0
    for scenario, checks in runs.items():
        t = totals(checks)
        failing += bool(t.fail)
        bad = ", ".join(f"{cid}: {c.message[:120]}" for cid, c in checks.items() if c.fail or c.warn)
        print(f"   {scenario:<{width}}  {t.short():>9}  {'ok' if not (t.fail or t.warn) else bad}")
    t = totals({f"{s}/{c}": x for s, cs in runs.items() for c, x in cs.items()})
    print(f"   {len(runs)} scenarios ({failing} with failures); checks ok/warn/fail {t.short()}")
    return 0


def cmd_baseline(root: str) -> int:
    failing = [s for s, checks in load(root).items() if any(c.fail or c.warn for c in checks.values())]
    print("server:" if failing else "server: []")
    for scenario in failing:
        print(f"  - {scenario}")
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="conformance_diff.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("direct", nargs="?")
    ap.add_argument("via", nargs="?")
    ap.add_argument("--name", help="title of the table")
    ap.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    ap.add_argument("--quiet", action="store_true", help="list only regressions below the table")
    ap.add_argument("--known", metavar="FILE", help="accepted regressions, one `scenario :: check-id` per line")
    ap.add_argument("--summary", metavar="DIR", help="per-scenario counts of one run")
    ap.add_argument("--baseline", metavar="DIR", help="print an --expected-failures YAML for one run")
    args = ap.parse_args(argv)
    if args.summary:
        return cmd_summary(args.summary)
    if args.baseline:
        return cmd_baseline(args.baseline)
    if not (args.direct and args.via):
        ap.print_usage(sys.stderr)
        return 2
    return cmd_diff(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
