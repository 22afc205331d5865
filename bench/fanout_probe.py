"""Fan-out probe: R rooms x C raw WebSocket clients, one writer per room.

Run on demand (prints, asserts nothing; loopback only; bounded in time):

    python bench/fanout_probe.py --rooms 50 --clients 10 --rate 10 --seconds 10

Each writer sends real Yjs updates (one Y.Text insert each) at ``--rate`` per second;
every other client of the room records the delay until the relayed update arrives. The
server under test is a fresh ``crdt-sync serve`` child process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import websockets
from pycrdt import Doc, Text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.procstat import cpu_seconds, rss_kib
from rooms.codec import encode_sync_update
from tests.server_process import ServerProcess


async def run(args: argparse.Namespace) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(Path(tmp), "--log-level", "warning") as server,
    ):
        pid = server.proc.pid
        url = server.ws_url
        sent_at: dict[tuple[int, int], float] = {}
        delays: list[float] = []
        expected = 0
        received = 0
        rss0 = rss_kib(pid)

        async def reader(ws, room: int) -> None:
            nonlocal received
            async for message in ws:
                # update messages carry the marker "r<room>n<seq>;" inside the text insert
                if message[:2] == b"\x00\x02":
                    marker = message[message.find(b"r") :]
                    end = marker.find(b";")
                    try:
                        r, n = marker[1:end].split(b"n")
                        key = (int(r), int(n))
                    except ValueError:
                        continue
                    if key in sent_at:
                        delays.append(time.perf_counter() - sent_at[key])
                        received += 1

        async with anyio.create_task_group() as tg:
            sockets = []
            for room in range(args.rooms):
                for _ in range(args.clients):
                    ws = await websockets.connect(f"{url}/probe-{room}", max_size=None)
                    sockets.append((room, ws))
            await anyio.sleep(0.5)
            rss1 = rss_kib(pid)
            for room, ws in sockets:
                tg.start_soon(reader, ws, room)
            writers = {room: ws for room, ws in sockets}  # last socket of each room writes
            docs = {room: Doc() for room in writers}
            for doc in docs.values():
                doc["body"] = Text()
            cpu0 = cpu_seconds(pid)
            gen_cpu0 = time.process_time()
            started = time.perf_counter()
            seq = 0
            interval = 1 / args.rate
            while time.perf_counter() - started < args.seconds:
                tick = time.perf_counter()
                for room, ws in writers.items():
                    doc = docs[room]
                    text = doc.get("body", type=Text)
                    before = doc.get_state()
                    text += f"r{room}n{seq};"
                    update = doc.get_update(before)
                    sent_at[(room, seq)] = time.perf_counter()
                    await ws.send(encode_sync_update(update))
                    expected += args.clients - 1
                seq += 1
                await anyio.sleep(max(0, interval - (time.perf_counter() - tick)))
            with anyio.move_on_after(5):
                while received < expected:
                    await anyio.sleep(0.05)
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(pid) - cpu0
            for _, ws in sockets:
                await ws.close()
            tg.cancel_scope.cancel()

        delays.sort()
        pct = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))] * 1000  # noqa: E731
        print(
            f"rooms={args.rooms} clients/room={args.clients} rate={args.rate}/s/room "
            f"seconds={args.seconds}"
        )
        print(f"deliveries expected={expected} received={received} lost={expected - received}")
        if delays:
            print(
                f"latency p50={pct(0.5):.2f} ms p99={pct(0.99):.2f} ms "
                f"max={delays[-1] * 1000:.1f} ms mean={statistics.mean(delays) * 1000:.2f} ms"
            )
        gen_cpu = time.process_time() - gen_cpu0
        print(
            f"deliveries/s={received / elapsed:.0f} server CPU={cpu / elapsed * 100:.0f}% "
            f"load generator CPU={gen_cpu / elapsed * 100:.0f}%"
        )
        print(
            f"server RSS idle={rss0} KiB, with {len(sockets)} connections={rss1} KiB "
            f"({(rss1 - rss0) / max(1, len(sockets)):.1f} KiB/connection)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.seconds > 120:
        parser.error("--seconds is capped at 120")
    anyio.run(run, args)


if __name__ == "__main__":
    main()
