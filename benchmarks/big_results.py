"""Big results: the query-worker's reader on a 500,000-row result, against azure-kusto-data's
own ``execute`` and ``execute_streaming_query`` on the same query.

The sample StormEvents table is built once with 500,000 rows (cached under
``.adxflow/benchmarks``) and served read-only by the local Kusto endpoint in a process of
its own. The query projects ten of its columns, a report's mix of times, text and numbers,
about 130 bytes of JSON a row, 62 MiB in all by the reader's count (under the 64 MiB cap).

The local endpoint answers only once it has built the whole response, and takes longer to
build it than a client takes to read it, so every client read against it measures the
endpoint. Each run therefore first records the endpoint's answer (timed: the endpoint's own
figure) and writes it as a cluster does, as compact JSON with one frame a line (the local
endpoint puts a space after every comma and colon); then a replay server in a process of its
own sends those bytes to each client as fast as it reads them. Each measurement runs in a
new process (``python -m benchmarks.big_results measure``) that imports what it needs and
runs one small warm-up query, then reads the whole result once:

- *reader*: the query-worker's way. The process imports what ``python -m services.query_worker``
  imports (``common/platform/serving.py``'s ``serve``, with its RabbitMQ broker built but not connected),
  no more and no less; then ``KustoRunner.run`` (``services/query_worker/kusto.py``) reads the
  result with ``max_rows`` 500,000 and ``max_bytes`` 64 MiB (the default caps) into a writer
  of the folder blob store, as a step stores its ``result.json``: each batch of rows goes to
  the file as it is read, and only the step's preview rows stay in memory;
- *execute*: the async client's ``execute``; the rows of its primary result, kept in memory;
- *execute_streaming_query*: the async client's streaming query; every raw row of the
  primary result, as it arrives, kept in memory.

Peak RSS is the measuring process's peak resident set (``VmHWM``) after the read (the
target's figure), and its growth over the read is that minus the peak before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.figures import Section
    from benchmarks.servers import ServerProcess

# Everything else is imported where it is used: a measuring process holds what it measures.

ROWS = 500_000
MAX_BYTES = 64 * 2**20
DATABASE = "Samples"
COLUMNS = (
    "StartTime", "EndTime", "State", "EventType", "DamageProperty", "BeginLat", "BeginLon",
    "BeginLocation", "EndLocation", "InjuriesDirect",
)  # fmt: skip
QUERY = f"StormEvents | project {', '.join(COLUMNS)}"
WARM_UP = "StormEvents | take 10"
METHODS = ("reader", "execute", "execute_streaming_query")
_QUERY_PATH = "/v2/rest/query"
_CHUNK = 64 * 1024


def _peak_rss() -> int:
    """This process's peak resident set so far, in bytes: ``VmHWM``.

    Not ``ru_maxrss``: Linux carries the parent's peak over ``fork`` and ``exec``
    into it, so a process started by a big one would report the big one's peak.
    """
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


async def _read_with_reader(cluster: str, query: str, data: Path) -> tuple[int, int, float]:
    from common.platform.blobs.interface import artifact_key
    from common.platform.config import load_settings
    from common.platform.connections import Connections
    from common.platform.runtime import Runtime
    from common.platform.serving import serve  # noqa: F401  (what `serve` imports, no more)
    from services.query_worker.kusto import KustoRunner
    from services.query_worker.service import running

    settings = load_settings(amqp_url="amqp://guest:guest@127.0.0.1:5672/", data_dir=data)
    connections = Connections()
    connections.add_local("local", cluster)
    runtime = Runtime.build(settings, name="query_worker", connections=connections)
    # What `python -m services.query_worker` imports: the context is made but not entered, so
    # nothing connects to the broker.
    running(runtime)
    await runtime.blobs.start()
    runner = KustoRunner(connections, timeout=600)

    async def read(text: str, step: str) -> Any:
        key = artifact_key(uuid.uuid4().hex, step, 1, "result.json")
        async with runtime.blobs.writer(key, "application/json") as blob:
            return await runner.run(
                connection="local",
                database=DATABASE,
                text=text,
                command=False,
                client_request_id=f"bench;{uuid.uuid4()}",
                max_rows=ROWS,
                max_bytes=MAX_BYTES,
                truncate=False,
                head=settings.preview_rows,
                into=blob,
            )

    try:
        await read(WARM_UP, "warm_up")
        before = _peak_rss()
        started = time.perf_counter()
        outcome = await read(query, "query")
        return outcome.row_count, before, time.perf_counter() - started
    finally:
        await runner.close()


async def _read_with_client(cluster: str, query: str, streaming: bool) -> tuple[int, int, float]:
    from azure.kusto.data import KustoConnectionStringBuilder
    from azure.kusto.data.aio import KustoClient

    async with KustoClient(KustoConnectionStringBuilder.with_no_authentication(cluster)) as client:

        async def read(text: str) -> list[Any]:
            if not streaming:
                response = await client.execute(DATABASE, text)
                return list(response.primary_results[0].raw_rows)
            dataset = await client.execute_streaming_query(DATABASE, text)
            table = await dataset.iter_primary_results().__anext__()
            return [row async for row in table.raw_rows]

        await read(WARM_UP)
        before = _peak_rss()
        started = time.perf_counter()
        rows = len(await read(query))
        return rows, before, time.perf_counter() - started


async def measure(method: str, cluster: str, query: str, data: Path) -> dict[str, float]:
    if method == "reader":
        rows, before, seconds = await _read_with_reader(cluster, query, data)
    else:
        rows, before, seconds = await _read_with_client(cluster, query, streaming=method != "execute")
    return {"rows": rows, "seconds": seconds, "rss_before": before, "rss_peak": _peak_rss()}


async def _in_process(method: str, cluster: str, query: str, data: Path) -> dict[str, float]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.big_results",
        "measure",
        method,
        cluster,
        query,
        str(data),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{method} failed: {err.decode(errors='replace')[-2000:]}")
    figures: dict[str, float] = json.loads(out)
    return figures


def compact(body: bytes) -> bytes:
    """A v2 response as a Kusto cluster writes it: compact JSON, one frame a line."""
    frames = json.loads(body)
    return ("[" + ",\r\n".join(json.dumps(frame, separators=(",", ":")) for frame in frames) + "]").encode()


async def record(cluster: str, queries: list[str], folder: Path) -> float:
    """Save the endpoint's answer to each query in *folder*, made compact as a cluster sends it;
    the seconds the endpoint took to answer the last one."""
    import aiohttp

    answers: dict[str, bytes] = {}
    seconds = 0.0
    async with aiohttp.ClientSession() as session:
        for query in queries:
            started = time.perf_counter()
            request = {"db": DATABASE, "csl": query}
            async with session.post(f"{cluster}{_QUERY_PATH}", json=request) as response:
                response.raise_for_status()
                answers[query] = await response.read()
            seconds = time.perf_counter() - started
    await asyncio.to_thread(_save, answers, folder)
    return seconds


def _save(answers: dict[str, bytes], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, str] = {}
    for number, (query, body) in enumerate(answers.items()):
        index[query] = f"{number}.json"
        (folder / index[query]).write_bytes(compact(body))
    (folder / "index.json").write_text(json.dumps(index))


def replay_server(folder: Path) -> ServerProcess:
    """A Kusto endpoint that answers each recorded query with the recorded bytes, in a process of its own."""
    from benchmarks.servers import ServerProcess

    return ServerProcess("the replay server", "benchmarks.big_results", "replay", str(folder))


async def _replay(folder: Path) -> None:
    from aiohttp import web

    index = json.loads((folder / "index.json").read_text())
    bodies = {query: (folder / name).read_bytes() for query, name in index.items()}

    async def answer(request: web.Request) -> web.StreamResponse:
        query = (await request.json()).get("csl")
        if query not in bodies:
            return web.json_response({"error": {"message": f"not recorded: {query!r}"}}, status=400)
        body = bodies[query]
        response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
        response.content_length = len(body)
        await response.prepare(request)
        view = memoryview(body)
        for start in range(0, len(body), _CHUNK):
            await response.write(view[start : start + _CHUNK])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post(_QUERY_PATH, answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def run(section: Section, workdir: Path, *, quick: bool) -> None:
    from benchmarks.figures import Target
    from benchmarks.servers import KustoEndpoint, sample_database

    rows = 3000 if quick else ROWS
    repeat = 1 if quick else 3
    database = sample_database(None if quick else ROWS)
    query = f"{QUERY} | take {rows}"
    recorded = workdir / "recorded"
    async with KustoEndpoint(database) as kusto:
        endpoint = await record(kusto.url, [WARM_UP, query], recorded)
    section.add("local endpoint: rows per second, building its answer", "rows/s", [rows / endpoint])
    results: dict[str, list[dict[str, float]]] = {method: [] for method in METHODS}
    async with replay_server(recorded) as replay:
        for _ in range(repeat):
            for method in METHODS:
                results[method].append(await _in_process(method, replay.url, query, workdir / "worker"))
    for method, runs in results.items():
        if any(run["rows"] != rows for run in runs):
            raise RuntimeError(f"{method} read {[run['rows'] for run in runs]} rows, not {rows:,}")
        reader = method == "reader"
        section.add(
            f"{method}: rows per second",
            "rows/s",
            [run["rows"] / run["seconds"] for run in runs],
            Target(100_000, at_least=True) if reader else None,
        )
        section.add(
            f"{method}: peak RSS",
            "MiB",
            [run["rss_peak"] / 2**20 for run in runs],
            Target(2.5 * MAX_BYTES / 2**20) if reader else None,
        )
        section.add(
            f"{method}: RSS growth over the read",
            "MiB",
            [(run["rss_peak"] - run["rss_before"]) / 2**20 for run in runs],
        )
    for method in METHODS[1:]:
        section.add(
            f"reader ÷ {method}: rows per second",
            "×",
            [
                (r["rows"] / r["seconds"]) / (o["rows"] / o["seconds"])
                for r, o in zip(results["reader"], results[method], strict=True)
            ],
        )
    size = (recorded / json.loads((recorded / "index.json").read_text())[query]).stat().st_size
    section.notes.append(
        f"Query: `{query}`; {rows:,} rows, a {size / 2**20:.1f} MiB response; {repeat} run(s) of each "
        "method, in turn within each run."
    )


METHOD = (
    __doc__.split("\n\n", 1)[1].strip()
    + "\n\nTarget: the reader reads ≥ 100,000 rows/s with peak RSS ≤ 2.5 × the 64 MiB byte cap (160 MiB)."
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.big_results")
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("measure", help="read one query's result one way; print JSON figures")
    one.add_argument("method", choices=METHODS)
    one.add_argument("cluster")
    one.add_argument("query")
    one.add_argument("data", type=Path, help="the query-worker's data folder (its folder blob store)")
    replay = commands.add_parser("replay", help="serve recorded answers; print the URL")
    replay.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.command == "measure":
        print(json.dumps(asyncio.run(measure(args.method, args.cluster, args.query, args.data))))
    else:
        asyncio.run(_replay(args.folder))


if __name__ == "__main__":
    main()
