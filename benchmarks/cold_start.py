"""Cold start: ``adxflow demo`` from process start to its first email.

Each run starts ``adxflow demo`` as a new process with a fresh ``ADXFLOW_DATA_DIR``
(embedded mode: in-process broker, SQLite history, its own SMTP server writing to
the data dir's outbox, the local Kusto endpoint on the sample database there). The
first email's time is the one the outbox stamped on it as it arrived (its file
name), minus the moment just before the process was started. *Cold* builds the
sample database (60,000 rows) as a first run on a machine does; *warm* finds a
prepared copy in the data dir, as every later run does.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.figures import Section, Target
from benchmarks.servers import ADXFLOW, clean_environment, free_port, sample_database


async def demo(data_dir: Path) -> tuple[float, float]:
    """Seconds from start to the first email, and to the demo's exit."""
    env = {
        **clean_environment(),
        "ADXFLOW_DATA_DIR": str(data_dir),
        "ADXFLOW_TRIGGER_PORT": str(free_port()),
        "ADXFLOW_HISTORY_PORT": str(free_port()),
        "ADXFLOW_SMTP_PORT": "0",
    }
    started = time.time()
    process = await asyncio.create_subprocess_exec(
        ADXFLOW,
        "demo",
        env=env,
        cwd=data_dir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 180)
    finished = time.time()
    if process.returncode != 0:
        raise RuntimeError(f"adxflow demo failed: {out.decode(errors='replace')[-2000:]}")
    emails = sorted((data_dir / "outbox").glob("*.eml"))
    if not emails:
        raise RuntimeError("adxflow demo sent no email")
    first = int(emails[0].name.split("-", 1)[0]) / 1e9
    return first - started, finished - started


async def run(section: Section, workdir: Path, *, quick: bool) -> None:
    runs = 1 if quick else 3
    prepared = sample_database()
    results: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
    for _ in range(runs):
        for kind in results:
            with tempfile.TemporaryDirectory(dir=workdir) as scratch:
                data_dir = Path(scratch)
                if kind == "warm":
                    shutil.copy(prepared, data_dir / prepared.name)
                results[kind].append(await demo(data_dir))
    for kind, label in (("cold", "building the sample database"), ("warm", "sample database prepared")):
        section.add(
            f"start to first email, {kind} ({label})",
            "s",
            [first for first, _ in results[kind]],
            Target(10),
        )
        section.add(f"start to exit, {kind} (both demo jobs done)", "s", [done for _, done in results[kind]])


METHOD = __doc__.split("\n\n", 1)[1].strip() + "\n\nTarget: first email within 10 s of process start."
