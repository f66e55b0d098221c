"""Dead letters: messages no step could process, kept with why, for an operator.

History consumes the dead-letter queue into this table, so the API can list
them, replay one (send it back to its step, as a new attempt) or delete it.
Two kinds arrive: records a step wrote when it ran out of attempts (a
:class:`~common.contracts.messages.DeadLetterRecord` with the error and the whole run
message), and raw messages the broker dead-lettered: after its delivery limit,
or rejected as unreadable. A run message dead-lettered after the delivery limit
also fails its run at once (``DeliveryLimit``; see the history service), since
no step will report on it any more; its letter stays here for replay.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError

from common.contracts.messages import DeadLetterRecord, ErrorCode, ErrorInfo, RunMessage, new_id, utcnow
from common.contracts.topology import DELIVERY_LIMIT
from common.platform.broker.interface import (
    DELIVERY_LIMIT_REACHED,
    REASON_HEADER,
    Broker,
    Delivery,
    death_reason,
)
from common.platform.database import SqlStore, insert_ignore, read_utc

metadata = sa.MetaData()

_LETTERS = uuid.UUID("9a3c1e52-4f7d-4b0e-8d6a-2c5b7e1f0a94")

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("run_id", sa.String(64)),
    sa.Column("step_id", sa.String(64)),
    sa.Column("attempt", sa.Integer),
    sa.Column("routing_key", sa.String(128), nullable=False),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("dead_at", sa.DateTime(timezone=True), nullable=False),
    #: Retention deletes the dead letters of expired runs; a re-run those of its step.
    sa.Index("ix_dead_letters_run_id_step_id", "run_id", "step_id"),
)


def _view(row: Any) -> dict[str, Any]:
    dead_at = read_utc(row.dead_at)
    return {
        "id": row.id,
        "run_id": row.run_id,
        "step_id": row.step_id,
        "attempt": row.attempt,
        "routing_key": row.routing_key,
        "error": {"code": row.error_code, "message": row.error_message} if row.error_code else None,
        "dead_at": dead_at.isoformat().replace("+00:00", "Z"),
    }


@dataclass(frozen=True)
class Undelivered:
    """A run message the broker dead-lettered after its delivery limit: its run fails with *error*."""

    message: RunMessage
    error: ErrorInfo
    #: When the letter first arrived: the same however often it is delivered.
    dead_at: dt.datetime


def _letter_id(*parts: object) -> str:
    """The id of the dead letter of one message, the same each time that letter is delivered."""
    return uuid.uuid5(_LETTERS, "\n".join(str(part) for part in parts)).hex


def delivery_limit_error(message: RunMessage) -> ErrorInfo:
    return ErrorInfo(
        code=ErrorCode.DELIVERY_LIMIT,
        message=(
            f"the message of step {message.step_id!r} (attempt {message.attempt}) was delivered more often "
            f"than the broker's delivery limit ({DELIVERY_LIMIT}) without being settled, and the broker "
            "dead-lettered it: the service of that step may be crashing on it. Once that is fixed, "
            "replay the dead letter or re-run the run."
        ),
    )


class DeadLetterStore(SqlStore):
    metadata = metadata

    async def keep(self, delivery: Delivery) -> Undelivered | None:
        """Record one dead-lettered message, whatever its shape.

        Recording it again (a redelivery of the dead letter) changes nothing. Returns the run
        message and its error when the broker dead-lettered a run message after its delivery
        limit: nobody else will report that run's failure.
        """
        values: dict[str, Any] = {
            "id": new_id(),
            "routing_key": delivery.routing_key,
            "body": delivery.body.decode("utf-8", errors="replace"),
            "dead_at": utcnow(),
        }
        undelivered = None
        try:
            record = DeadLetterRecord.model_validate_json(delivery.body)
        except ValidationError:
            message = _run_message(delivery.body)
            reason = death_reason(delivery)
            refused = delivery.headers.get(REASON_HEADER)
            if message is not None and reason == DELIVERY_LIMIT_REACHED and _has_step(message):
                error = delivery_limit_error(message)
                undelivered = Undelivered(message, error, values["dead_at"])
                values.update(error_code=error.code.value, error_message=error.message)
            elif refused:
                # A message a service could not read (a newer major, say), kept whole for a replay.
                values.update(error_code="UnreadableMessage", error_message=str(refused))
            else:
                values.update(
                    error_code="DeadLettered",
                    error_message=f"the broker dead-lettered the message ({reason or 'reason unknown'})",
                )
            if message is not None:
                values.update(
                    id=_letter_id(
                        delivery.routing_key,
                        message.run_id,
                        message.step_id,
                        message.attempt,
                        reason or refused,
                    ),
                    run_id=message.run_id,
                    step_id=message.step_id,
                    attempt=message.attempt,
                )
        else:
            values.update(
                id=_letter_id(record.routing_key, record.run_id, record.step_id, record.attempt, "record"),
                run_id=record.run_id,
                step_id=record.step_id,
                attempt=record.attempt,
                routing_key=record.routing_key,
                error_code=record.error.code.value,
                error_message=record.error.message,
            )
        async with self.engine.begin() as conn:
            await conn.execute(insert_ignore(conn, dead_letters).values(**values))
            if undelivered is not None:
                first = sa.select(dead_letters.c.dead_at).where(dead_letters.c.id == values["id"])
                dead_at = read_utc((await conn.execute(first)).scalar_one())
                undelivered = Undelivered(undelivered.message, undelivered.error, dead_at)
        return undelivered

    async def all(self, limit: int = 100) -> list[dict[str, Any]]:
        query = sa.select(dead_letters).order_by(dead_letters.c.dead_at.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [_view(row) for row in (await conn.execute(query)).all()]

    async def replay(self, letter_id: str, broker: Broker) -> dict[str, Any] | None:
        """Send a dead letter back to its step as a new attempt, then forget it.

        The letter is read, published, and only then deleted, with no transaction open while the
        broker takes it: a crash in between leaves the letter to be replayed again, which sends
        the same attempt again, and every step is idempotent on its attempt.
        """
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(dead_letters).where(dead_letters.c.id == letter_id))).first()
        if row is None:
            return None
        body = row.body.encode("utf-8")
        message: RunMessage | None
        try:
            message = DeadLetterRecord.model_validate_json(body).message
        except ValidationError:
            message = _run_message(body)
        if message is not None:
            again = message.model_copy(update={"attempt": message.attempt + 1, "pending": None})
            await broker.publish_model(
                row.routing_key, again, message_id=f"{again.run_id}:{again.step_id}:{again.attempt}"
            )
            replayed: dict[str, Any] = {
                "run_id": again.run_id,
                "step_id": again.step_id,
                "attempt": again.attempt,
            }
        else:
            await broker.publish(row.routing_key, body)
            replayed = {"routing_key": row.routing_key}
        await self.delete(letter_id)
        return replayed

    async def delete(self, letter_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(dead_letters.delete().where(dead_letters.c.id == letter_id))
        return bool(result.rowcount)

    async def delete_for(self, run_id: str, step_id: str) -> int:
        """Forget the dead letters of one step of a run (a re-run supersedes them)."""
        where = (dead_letters.c.run_id == run_id) & (dead_letters.c.step_id == step_id)
        async with self.engine.begin() as conn:
            result = await conn.execute(dead_letters.delete().where(where))
        return int(result.rowcount or 0)

    async def delete_expired(self, run_ids: Sequence[str], cutoff: dt.datetime) -> int:
        """Forget the dead letters of *run_ids*, and those of no run that died before *cutoff*."""
        where = dead_letters.c.run_id.in_(run_ids) | (
            dead_letters.c.run_id.is_(None) & (dead_letters.c.dead_at < cutoff)
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(dead_letters.delete().where(where))
        return int(result.rowcount or 0)


def _has_step(message: RunMessage) -> bool:
    """Whether *message* names a step of its own itinerary (a run to fail at that step)."""
    return any(step.id == message.step_id for step in message.itinerary)


def _run_message(body: bytes) -> RunMessage | None:
    try:
        return RunMessage.model_validate(json.loads(body))
    except (ValueError, ValidationError):
        return None
