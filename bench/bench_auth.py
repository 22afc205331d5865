"""Refused connections cost nothing that stays; token checks cost little per connection.

Run on demand from the repository root (prints figures, asserts nothing; loopback only;
every phase bounded in count and in time)::

    python bench/bench_auth.py [--refused 10000] [--rounds 1] [--accepted 400]
                               [--concurrency 50] [--default-limits]

1. **refused**: a real ``crdt-sync serve --auth-secret`` (``tests/server_process.py``)
   gets ``--refused`` WebSocket connections with bad tokens (missing, garbage, wrong
   secret, expired, ``alg: none``, forged, and valid tokens for a doc outside the grant:
   4401 / 4403), at most ``--concurrency`` at once, each to a doc name never used
   before, on ``/yjs/<doc>`` and ``/sync/v1/ws``. The server's RSS (``VmRSS``) is
   read after a warm-up of 500 refusals, at its peak (sampled every 50 ms) and after
   the flood; then ``GET /docs`` (admin token) must list no doc: a refusal loads no
   room and creates nothing. The per-address auth-failure budget
   (``--rate-limit-http-requests``) is raised for this phase so every connection reaches
   the token check (``--default-limits`` keeps it: most then get 429 without one).
2. **cost**: ``--accepted`` connections, one at a time, to ``/yjs/<doc>`` (open, read
   sync step 1, close) against that server with a valid token and against an open
   server (no auth), alternating between the two so machine noise hits both alike.
   Reports the median and mean time per accepted connection and the difference, plus
   the in-process cost of one :meth:`TokenVerifier.verify`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import anyio
import httpx
import websockets
from websockets.exceptions import InvalidStatus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.procstat import PeakRss, mib, rss_kib
from crdt_sync.auth.tokens import TokenVerifier, issue_token
from tests.integration.auth_support import OTHER_SECRET, SECRET, forged, unsigned
from tests.server_process import ServerProcess

PHASE_SECONDS = 300.0
WARMUP = 500


def bad_token(n: int) -> tuple[str | None, str]:
    """The n-th bad token of the flood and the doc it asks for (a fresh name)."""
    doc = f"flood/{n}"
    kind = n % 7
    if kind == 0:
        return None, doc
    if kind == 1:
        return f"garbage-{n}", doc
    if kind == 2:
        return issue_token(OTHER_SECRET, f"u{n}", "orga", ("**",), "write", 600), doc
    if kind == 3:
        return issue_token(
            SECRET, f"u{n}", "orga", ("**",), "write", 60, now=time.time() - 7200
        ), doc
    if kind == 4:
        return unsigned(sub=f"u{n}"), doc
    if kind == 5:
        return forged(
            issue_token(SECRET, f"u{n}", "orga", ("mine/*",), "read", 600), docs=["**"]
        ), doc
    # valid token, doc outside its grant: 4403
    return issue_token(SECRET, f"u{n}", "orga", ("mine/*",), "write", 600), doc


async def refused_once(base: str, n: int, outcomes: Counter) -> None:
    tok, doc = bad_token(n)
    # kind 6 (a valid token outside its grant) only refuses on a doc: the frame feed
    # serves every org member the frames its grant covers
    path = "/sync/v1/ws" if n % 5 == 4 and n % 7 != 6 else f"/yjs/{doc}"
    url = base + path + (f"?token={tok}" if tok is not None else "")
    try:
        with anyio.fail_after(10):
            async with websockets.connect(url, open_timeout=5, close_timeout=2) as ws:
                try:
                    while True:
                        await ws.recv()
                except websockets.ConnectionClosed as exc:
                    outcomes[exc.rcvd.code if exc.rcvd else "no close frame"] += 1
    except InvalidStatus as exc:
        outcomes[f"http {exc.response.status_code}"] += 1
    except (OSError, TimeoutError, websockets.WebSocketException) as exc:
        outcomes[type(exc).__name__] += 1


async def flood(base: str, start: int, count: int, concurrency: int, outcomes: Counter) -> float:
    limiter = anyio.Semaphore(concurrency)
    began = time.monotonic()

    async def one(n: int) -> None:
        try:
            await refused_once(base, n, outcomes)
        finally:
            limiter.release()

    with anyio.fail_after(PHASE_SECONDS):
        async with anyio.create_task_group() as tg:
            for n in range(start, start + count):
                await limiter.acquire()
                tg.start_soon(one, n)
    return time.monotonic() - began


async def accepted_once(base: str, doc: str, tok: str | None) -> float:
    url = base + f"/yjs/{doc}" + (f"?token={tok}" if tok else "")
    began = time.perf_counter()
    with anyio.fail_after(10):
        async with websockets.connect(url, open_timeout=5, close_timeout=2) as ws:
            await ws.recv()  # sync step 1: the connection was accepted and the room joined
    return time.perf_counter() - began


async def blocked_for(base: str, tok: str, limit: float = 60.0) -> float:
    """Seconds until a valid token from this address is served again (the front door
    blocks an address after too many failed authentications)."""
    began = time.monotonic()
    with anyio.fail_after(limit):
        while True:
            try:
                await accepted_once(base, "cost/probe", tok)
                return time.monotonic() - began
            except websockets.ConnectionClosed:
                await anyio.sleep(0.2)


def describe(times: list[float]) -> str:
    return (
        f"median {statistics.median(times) * 1000:.2f} ms, "
        f"mean {statistics.fmean(times) * 1000:.2f} ms"
    )


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    # (the audit log line of every refusal is WARNING: it stays on, as in production)
    flags: tuple[str, ...] = ("--auth-secret", SECRET, "--log-level", "warning")
    if not args.default_limits:
        flags += ("--rate-limit-http-requests", "100000000")
    for sub in ("auth", "open"):
        (workdir / sub).mkdir()
    with (
        ServerProcess(workdir / "auth", *flags) as authed,
        ServerProcess(workdir / "open", "--log-level", "warning") as open_server,
    ):
        assert authed.proc is not None and open_server.proc is not None
        base = authed.url.replace("http://", "ws://", 1)
        print(
            f"server pid {authed.proc.pid}, {authed.url}, "
            f"--auth-secret <secret> {' '.join(flags[2:])}"
        )
        print(f"RSS at start: {mib(rss_kib(authed.proc.pid))}")

        outcomes: Counter = Counter()
        await flood(base, 0, WARMUP, args.concurrency, outcomes)
        before = rss_kib(authed.proc.pid)
        peak = PeakRss(authed.proc.pid)
        outcomes.clear()
        seconds = 0.0
        after_rounds: list[int] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(peak.run)
            for round_ in range(args.rounds):
                start = WARMUP + round_ * args.refused
                seconds += await flood(base, start, args.refused, args.concurrency, outcomes)
                after_rounds.append(rss_kib(authed.proc.pid))
            tg.cancel_scope.cancel()
        after = after_rounds[-1]
        valid = issue_token(SECRET, "bench", "orga", ("**",), "write", 3600)
        blocked = await blocked_for(base, valid)
        admin = issue_token(SECRET, "bench-admin", "orga", ("**",), "admin", 600)
        async with httpx.AsyncClient(base_url=authed.url, timeout=10) as http:
            listed = await http.get(
                "/docs", params={"prefix": "flood/"}, headers={"Authorization": f"Bearer {admin}"}
            )
        total = args.refused * args.rounds
        print(
            f"\nrefused: {args.rounds} x {args.refused} connections (concurrency "
            f"{args.concurrency}) in {seconds:.1f} s = {total / seconds:.0f}/s"
        )
        print(f"  server RSS after each round: {', '.join(mib(k) for k in after_rounds)}")
        print(f"  outcomes: {dict(sorted(outcomes.items(), key=str))}")
        print(
            f"  server RSS before {mib(before)}, peak {mib(peak.kib)}, after {mib(after)} "
            f"(after - before: {(after - before) / 1024:+.1f} MiB)"
        )
        print(
            f"  GET /docs?prefix=flood/ after the flood: {listed.status_code} {listed.text[:200]}"
        )
        print(f"  a valid token from the flooding address was refused for {blocked:.1f} s after")

        open_base = open_server.url.replace("http://", "ws://", 1)
        with_auth: list[float] = []
        without: list[float] = []
        for warm in range(20):
            await accepted_once(base, f"cost/warm{warm}", valid)
            await accepted_once(open_base, f"cost/warm{warm}", None)
        for n in range(args.accepted):
            doc = f"cost/{n % 10}"
            if n % 2:
                without.append(await accepted_once(open_base, doc, None))
                with_auth.append(await accepted_once(base, doc, valid))
            else:
                with_auth.append(await accepted_once(base, doc, valid))
                without.append(await accepted_once(open_base, doc, None))
        extra = statistics.median(with_auth) - statistics.median(without)
        print(f"\naccepted connections, {args.accepted} each, one at a time (connect + step 1):")
        print(f"  --auth-secret, valid token: {describe(with_auth)}")
        print(f"  open server, no token:      {describe(without)}")
        print(f"  token check cost per connection (median difference): {extra * 1000:+.2f} ms")
        print(
            f"  server RSS after: auth {mib(rss_kib(authed.proc.pid))}, "
            f"open {mib(rss_kib(open_server.proc.pid))}"
        )

    verifier = TokenVerifier([SECRET])
    runs = 5000
    began = time.perf_counter()
    for _ in range(runs):
        verifier.verify(valid)
    per = (time.perf_counter() - began) / runs
    print(f"\nin-process TokenVerifier.verify (HS256): {per * 1e6:.1f} us per token")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refused", type=int, default=10_000)
    parser.add_argument("--accepted", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--rounds", type=int, default=1, help="floods of --refused each (RSS after each)"
    )
    parser.add_argument(
        "--default-limits",
        action="store_true",
        help="keep the default auth-failure budget (most refusals then get 429 unchecked)",
    )
    anyio.run(main, parser.parse_args())
