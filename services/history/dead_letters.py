"""Dead letters: messages no step could process, kept with why, for an operator.

History consumes the dead-letter queue into this table, so the API can list
them, replay one (send it back to its step, as a new attempt) or delete it.
Two kinds arrive: records a step wrote when it ran out of attempts (a
:class:`~common.contracts.messages.DeadLetterRecord` with the error and the whole run
message), and raw messages the broker dead-lettered after its delivery limit.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError

from common.contracts.messages import DeadLetterRecord, RunMessage, new_id, utcnow
from common.platform.broker.interface import REASON_HEADER, Broker, Delivery
from common.platform.database import SqlStore

metadata = sa.MetaData()

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
    dead_at = row.dead_at if row.dead_at.tzinfo else row.dead_at.replace(tzinfo=dt.UTC)
    return {
        "id": row.id,
        "run_id": row.run_id,
        "step_id": row.step_id,
        "attempt": row.attempt,
        "routing_key": row.routing_key,
        "error": {"code": row.error_code, "message": row.error_message} if row.error_code else None,
        "dead_at": dead_at.isoformat().replace("+00:00", "Z"),
    }


class DeadLetterStore(SqlStore):
    metadata = metadata

    async def keep(self, delivery: Delivery) -> None:
        """Record one dead-lettered message, whatever its shape."""
        values: dict[str, Any] = {
            "id": new_id(),
            "routing_key": delivery.routing_key,
            "body": delivery.body.decode("utf-8", errors="replace"),
            "dead_at": utcnow(),
        }
        try:
            record = DeadLetterRecord.model_validate_json(delivery.body)
        except ValidationError:
            try:
                message = RunMessage.model_validate_json(delivery.body)
            except ValidationError:
                message = None
            if message is not None:
                values.update(run_id=message.run_id, step_id=message.step_id, attempt=message.attempt)
            refused = delivery.headers.get(REASON_HEADER)
            if refused:
                # A message a service could not read (a newer major, say), kept whole for a replay.
                values.update(error_code="UnreadableMessage", error_message=str(refused))
            else:
                reason = str(
                    delivery.headers.get("x-death-reason") or "the broker's delivery limit was reached"
                )
                values.update(error_code="DeadLettered", error_message=reason)
        else:
            values.update(
                run_id=record.run_id,
                step_id=record.step_id,
                attempt=record.attempt,
                routing_key=record.routing_key,
                error_code=record.error.code.value,
                error_message=record.error.message,
            )
        async with self.engine.begin() as conn:
            await conn.execute(dead_letters.insert().values(**values))

    async def all(self, limit: int = 100) -> list[dict[str, Any]]:
        query = sa.select(dead_letters).order_by(dead_letters.c.dead_at.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [_view(row) for row in (await conn.execute(query)).all()]

    async def replay(self, letter_id: str, broker: Broker) -> dict[str, Any] | None:
        """Send a dead letter back to its step as a new attempt, then forget it."""
        async with self.engine.begin() as conn:
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
                await broker.publish_model(row.routing_key, again)
                replayed = {"run_id": again.run_id, "step_id": again.step_id, "attempt": again.attempt}
            else:
                await broker.publish(row.routing_key, body)
                replayed = {"routing_key": row.routing_key}
            await conn.execute(dead_letters.delete().where(dead_letters.c.id == letter_id))
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


def _run_message(body: bytes) -> RunMessage | None:
    try:
        return RunMessage.model_validate(json.loads(body))
    except (ValueError, ValidationError):
        return None
