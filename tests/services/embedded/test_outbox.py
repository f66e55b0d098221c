from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from services.embedded.outbox import Outbox

RAW = (
    b"From: adxflow@localhost\r\n"
    b"To: ana@example.com\r\n"
    b"Subject: raw\r\n"
    b"Message-ID: <raw.1@adxflow>\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line that starts with a dot\r\n"
    b"last line\r\n"
)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(tmp_path / "outbox") as running:
        yield running


async def send_raw(port: int, data: bytes = RAW, recipients: tuple[str, ...] = ("ana@example.com",)) -> None:
    await aiosmtplib.send(
        data,
        sender="adxflow@localhost",
        recipients=list(recipients),
        hostname="127.0.0.1",
        port=port,
        timeout=5,
    )


async def test_binds_a_free_port_when_asked_for_port_zero(outbox: Outbox) -> None:
    assert outbox.port > 0


async def test_writes_the_message_bytes_as_received(outbox: Outbox) -> None:
    await send_raw(outbox.port)

    path = await outbox.wait_for_message(timeout=5)

    assert path.parent == outbox.directory
    assert path.suffix == ".eml"
    assert path.read_bytes() == RAW
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] == "<raw.1@adxflow>"


async def test_messages_sort_by_arrival(outbox: Outbox) -> None:
    arrived = []
    for number in range(3):
        await send_raw(outbox.port, RAW.replace(b"raw.1", f"raw.{number}".encode()))
        arrived.append(await outbox.wait_for_message(timeout=5))

    assert outbox.messages() == arrived
    assert [path.read_bytes().count(f"<raw.{n}@".encode()) for n, path in enumerate(arrived)] == [1, 1, 1]
    assert sorted(path.name for path in outbox.directory.iterdir()) == [path.name for path in arrived]


async def test_wait_for_message_returns_messages_that_arrived_before_the_call(outbox: Outbox) -> None:
    await send_raw(outbox.port)
    await send_raw(outbox.port)

    first = await outbox.wait_for_message(timeout=5)
    second = await outbox.wait_for_message(timeout=5)

    assert first != second
    assert outbox.messages() == [first, second]


async def test_wait_for_message_times_out_when_nothing_arrives(outbox: Outbox) -> None:
    with pytest.raises(TimeoutError):
        await outbox.wait_for_message(timeout=0.05)


async def test_reject_hook_refuses_the_message_with_its_reply(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def reject(recipients: list[str]) -> tuple[int, str] | None:
        seen.append(recipients)
        return (550, "5.7.1 Relaying denied")

    async with Outbox(tmp_path / "outbox", reject=reject) as outbox:
        with pytest.raises(aiosmtplib.SMTPDataError) as caught:
            await send_raw(outbox.port, recipients=("ana@example.com", "bo@example.com"))

        assert caught.value.code == 550
        assert caught.value.message == "5.7.1 Relaying denied"
        assert seen == [["ana@example.com", "bo@example.com"]]
        assert outbox.messages() == []


async def test_reject_hook_returning_none_accepts(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "outbox", reject=lambda recipients: None) as outbox:
        await send_raw(outbox.port)

        assert (await outbox.wait_for_message(timeout=5)).read_bytes() == RAW


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "example.com"])
def test_refuses_to_bind_beyond_loopback(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        Outbox(tmp_path, host=host)


async def test_localhost_binds_one_ipv4_port(tmp_path: Path) -> None:
    async with Outbox(tmp_path / "outbox", host="localhost") as outbox:
        await send_raw(outbox.port)

        assert (await outbox.wait_for_message(timeout=5)).read_bytes() == RAW


async def test_close_is_idempotent_and_stops_accepting(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    await outbox.start()
    port = outbox.port

    await outbox.close()
    await outbox.close()

    with pytest.raises((aiosmtplib.SMTPConnectError, OSError)):
        await send_raw(port)


async def test_close_drops_connections_a_client_left_open(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    await outbox.start()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=outbox.port, timeout=5)
    await client.connect()
    try:
        await outbox.close()

        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await client.noop()
    finally:
        client.close()
