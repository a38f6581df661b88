#!/usr/bin/env python3
"""End-to-end check of an MCP endpoint (normally the gateway) with the official Python SDK.

Usage:
  $PY scripts/e2e_python.py URL [TOKEN [TOOL [key=value ...]]] [options]

  URL     Streamable HTTP endpoint, e.g. http://127.0.0.1:8686/mcp/fixture
  TOKEN   sent as "Authorization: Bearer TOKEN"; "" or "-" sends no Authorization header
          (or use --token-env VAR to keep it off the command line)
  TOOL    tool to call after tools/list (default: the first listed tool, called with {} unless
          arguments are given); "-" lists only
  key=value  tool arguments; a value is parsed as JSON when it parses (a=2 -> 2, s="2" -> "2"),
          otherwise kept as a string. --args-json '{"k": ...}' passes one JSON object instead.

For each selected mode (--mode, default "both" = legacy then modern) the script connects with
the SDK's `Client` over Streamable HTTP, walks tools/list (following nextCursor), checks TOOL is
listed, calls it and prints one line per step. Modes:
  legacy  initialize handshake (protocol <= 2025-11-25, Mcp-Session-Id)
  modern  2026-07-28, stateless (no handshake; version and capabilities in _meta)
  auto    the SDK probes server/discover and falls back to initialize

Checks (all modes): tools/list succeeds and is non-empty; TOOL is listed; the call returns a
result that is not isError (with --expect-error: the call must fail, either with a JSON-RPC
error or isError, e.g. a policy denial); with --expect TEXT the result's text contains TEXT.

Exit code: 0 when every selected mode passed, 1 when any failed, 2 on bad usage. The `mcp`
package must be importable: run it with the venv's python ($PY from .mcp-peers/env.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

MODES = {"legacy": "legacy", "modern": "2026-07-28", "auto": "auto"}


def out(mode: str, msg: str) -> None:
    print(f"[e2e-python {mode}] {msg}", flush=True)


def as_plain(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(exclude_none=True, by_alias=True, mode="json")
    return obj


def result_text(result: Any) -> str:
    """All text of a CallToolResult: text content, embedded text resources, structured content."""
    parts: list[str] = []
    for item in getattr(result, "content", None) or []:
        text = getattr(item, "text", None)
        if text is None:
            text = getattr(getattr(item, "resource", None), "text", None)
        if text is not None:
            parts.append(str(text))
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        parts.append(json.dumps(structured, ensure_ascii=False))
    return "\n".join(parts)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="e2e_python.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("url")
    ap.add_argument("token", nargs="?", default="")
    ap.add_argument("tool", nargs="?", default="")
    ap.add_argument("tool_args", nargs="*", metavar="key=value")
    ap.add_argument("--mode", default="both", choices=["both", *MODES], help="default: both (legacy, then modern)")
    ap.add_argument("--token-env", metavar="VAR", help="read the bearer token from this environment variable")
    ap.add_argument("--header", action="append", default=[], metavar="'Name: value'", help="extra HTTP header")
    ap.add_argument("--args-json", metavar="JSON", help="tool arguments as one JSON object")
    ap.add_argument("--expect", metavar="TEXT", help="the call result's text must contain TEXT")
    ap.add_argument("--expect-error", action="store_true", help="the call must fail (JSON-RPC error or isError)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per mode (default 30)")
    ap.add_argument("--quiet", action="store_true", help="print only the per-mode result lines")
    args = ap.parse_args(argv)

    if args.token_env:
        args.token = os.environ.get(args.token_env, "")
        if not args.token:
            ap.error(f"--token-env {args.token_env}: variable is empty or unset")
    if args.token == "-":
        args.token = ""
    if args.tool == "":
        args.tool = None  # first listed tool
    elif args.tool == "-":
        args.tool = "-"  # list only

    if args.args_json is not None:
        if args.tool_args:
            ap.error("give tool arguments either as key=value or with --args-json, not both")
        try:
            args.arguments = json.loads(args.args_json)
        except ValueError as e:
            ap.error(f"--args-json: {e}")
        if not isinstance(args.arguments, dict):
            ap.error("--args-json must be a JSON object")
    else:
        args.arguments = {}
        for item in args.tool_args:
            if "=" not in item:
                ap.error(f"tool argument {item!r} is not key=value")
            key, value = item.split("=", 1)
            try:
                args.arguments[key] = json.loads(value)
            except ValueError:
                args.arguments[key] = value

    headers = {}
    for h in args.header:
        if ":" not in h:
            ap.error(f"--header {h!r} is not 'Name: value'")
        name, value = h.split(":", 1)
        headers[name.strip()] = value.strip()
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    args.headers = headers
    return args


async def run_mode(args: argparse.Namespace, mode: str) -> bool:
    import httpx2  # dependency of mcp>=2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    loud = not args.quiet
    t0 = time.monotonic()
    http = httpx2.AsyncClient(headers=args.headers, timeout=httpx2.Timeout(args.timeout))
    transport = streamable_http_client(args.url, http_client=http)
    try:
        async with Client(transport, mode=MODES[mode], read_timeout_seconds=args.timeout, cache=None) as client:
            if loud:
                info = client.server_info
                who = f", server {info.name} {info.version or ''}".rstrip() if info is not None else ""
                out(mode, f"connected: protocol {client.protocol_version}{who}")
            names: list[str] = []
            cursor = None
            for _ in range(100):
                page = await client.list_tools(cursor=cursor)
                names += [t.name for t in page.tools]
                cursor = page.next_cursor
                if not cursor:
                    break
            if not names:
                out(mode, "FAIL tools/list returned no tools")
                return False
            if loud:
                shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                out(mode, f"tools/list: {len(names)} tools: {shown}")
            if args.tool == "-":
                out(mode, f"PASS ({time.monotonic() - t0:.2f}s, list only)")
                return True
            tool = args.tool or names[0]
            if tool not in names:
                out(mode, f"FAIL tool {tool!r} is not in tools/list")
                return False
            try:
                result = await client.call_tool(tool, args.arguments)
            except Exception as e:  # a JSON-RPC error answer
                if args.expect_error:
                    out(mode, f"tools/call {tool}: error as expected: {e}")
                    out(mode, f"PASS ({time.monotonic() - t0:.2f}s)")
                    return True
                out(mode, f"FAIL tools/call {tool}: {type(e).__name__}: {e}")
                return False
            text = result_text(result)
            if loud:
                out(mode, f"tools/call {tool}: {json.dumps(as_plain(result), ensure_ascii=False)[:400]}")
            if args.expect_error:
                if getattr(result, "is_error", False):
                    out(mode, f"PASS ({time.monotonic() - t0:.2f}s, isError as expected)")
                    return True
                out(mode, f"FAIL tools/call {tool} succeeded but --expect-error was given")
                return False
            if getattr(result, "is_error", False):
                out(mode, f"FAIL tools/call {tool} returned isError: {text[:300]}")
                return False
            if args.expect is not None and args.expect not in text:
                out(mode, f"FAIL result text does not contain {args.expect!r}: {text[:300]!r}")
                return False
            out(mode, f"PASS ({time.monotonic() - t0:.2f}s)")
            return True
    finally:
        await http.aclose()


async def run_mode_bounded(args: argparse.Namespace, mode: str) -> bool:
    try:
        return await asyncio.wait_for(run_mode(args, mode), timeout=args.timeout + 5)
    except asyncio.TimeoutError:
        out(mode, f"FAIL timed out after {args.timeout + 5:.0f}s")
    except Exception as e:  # connection refused, HTTP 401, version negotiation failure, ...
        cause = e
        while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]
        out(mode, f"FAIL {type(cause).__name__}: {cause}")
    return False


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        import mcp  # noqa: F401
    except ImportError:
        print("e2e_python.py: the `mcp` package is missing; run it with .mcp-peers/venv/bin/python", file=sys.stderr)
        return 2
    modes = ["legacy", "modern"] if args.mode == "both" else [args.mode]
    results = {m: asyncio.run(run_mode_bounded(args, m)) for m in modes}
    failed = [m for m, ok in results.items() if not ok]
    print(f"[e2e-python] {args.url}: " + ", ".join(f"{m} {'ok' if ok else 'FAILED'}" for m, ok in results.items()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
