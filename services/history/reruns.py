"""Doing a run's work again: resending its email, re-running it from its failed step.

Both start from the run's kept message (``runs/<run_id>/run.json``): the
record step keeps the message that completed the run, and history keeps the
message carried by the status event of a failure that ends a run. A resend
points that message back at a ``send_email`` step with a new attempt and a
resend marker, so the notifier's ledger takes it as a delivery of its own and
the run goes no further than that step; the run's status stays what it was. A
re-run points it at the failed step with a new attempt and the outputs of the
steps before it; the run is running again until it ends again.
"""

from __future__ import annotations

from typing import Any

import structlog

from common.contracts.actions import SendEmail
from common.contracts.errors import ArtifactMissing
from common.contracts.flows import flow_of
from common.contracts.messages import (
    ErrorCode,
    ErrorInfo,
    RunMessage,
    RunStatus,
    StepKind,
    UnreadableMessage,
    read_message,
)
from common.platform.broker.interface import BrokerError
from common.platform.runtime import Runtime
from services.history.dead_letters import DeadLetterStore
from services.history.store import HistoryStore

log = structlog.get_logger(__name__)


def message_key(run_id: str) -> str:
    return f"runs/{run_id}/run.json"


class RedoRefused(Exception):
    """A resend or re-run that cannot be done; :attr:`status` is the HTTP status that says why."""

    status = 409
    code = "Conflict"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RunNotFound(RedoRefused):
    status = 404
    code = "NotFound"


class BadStep(RedoRefused):
    status = 400
    code = "InvalidRequest"


class BrokerUnavailable(RedoRefused):
    status = 503
    code = "Unavailable"


class Redo:
    def __init__(self, store: HistoryStore, letters: DeadLetterStore, runtime: Runtime) -> None:
        self.store = store
        self.letters = letters
        self.runtime = runtime

    async def keep(self, message: RunMessage) -> None:
        """Keep *message* as the run's latest whole state; a resend's never replaces it."""
        if message.resend is None:
            data = message.model_dump_json().encode()
            await self.runtime.blobs.put(message_key(message.run_id), data, "application/json")

    async def kept(self, run_id: str) -> RunMessage | None:
        """The run's kept message; None if there is none. `RedoRefused` if this release cannot read it."""
        try:
            body = await self.runtime.blobs.get(message_key(run_id))
        except ArtifactMissing:
            return None
        try:
            return read_message(RunMessage, body)
        except UnreadableMessage as exc:
            # Kept by a newer release (a higher major): a replica of that release can redo it.
            raise RedoRefused(f"the kept message of run {run_id} is {exc.reason}") from exc

    async def resend(self, run_id: str, step_id: str | None) -> dict[str, Any]:
        """Queue the email of *step_id* (by default the run's first that sent one) again."""
        await self._ended_run(run_id, "resend its email")
        message = await self._message(run_id)
        flow = flow_of(message)
        emailing = [
            step.id
            for step in message.itinerary
            if step.kind is StepKind.NOTIFY
            and step.flow_step is not None
            and isinstance(flow.step(step.flow_step), SendEmail)
        ]
        if step_id is not None and step_id not in emailing:
            raise BadStep(f"step: {step_id!r} is not a send_email step of run {run_id}")
        latest = await self.store.latest_attempts(run_id)
        sent = [
            step
            for step in emailing
            if step in latest and any(name.startswith("email") for name in latest[step]["artifacts"])
        ]
        chosen = step_id or (sent[0] if sent else None)
        if chosen is None or chosen not in sent:
            which = f"step {step_id!r}" if step_id else "any of its steps"
            raise RedoRefused(f"run {run_id} sent no email from {which}, so there is none to resend")
        attempt = await self.store.queue_attempt(run_id, chosen, reopen=False)
        if attempt is None:
            raise RedoRefused(f"run {run_id} changed while the resend was prepared; try again")
        again = message.model_copy(
            update={"step_id": chosen, "attempt": attempt, "pending": None, "resend": f"resend{attempt}"}
        )
        await self._publish(again)
        log.info("email resend queued", run_id=run_id, step_id=chosen, attempt=attempt)
        return {"run_id": run_id, "step_id": chosen, "attempt": attempt}

    async def rerun(self, run_id: str) -> dict[str, Any]:
        """Queue the failed step of a failed run again, with the outputs of the steps before it."""
        run = await self._ended_run(run_id, "re-run it")
        if run["status"] != RunStatus.FAILED.value:
            raise RedoRefused(f"run {run_id} {run['status']}; only a failed run can be re-run")
        step_id = run["failed_step"]
        if step_id is None:
            raise RedoRefused(f"run {run_id} failed before any step ran; start the flow again instead")
        message = await self._message(run_id)
        ids = [step.id for step in message.itinerary]
        if step_id not in ids:
            raise RedoRefused(f"run {run_id} failed at {step_id!r}, which its kept message does not know")
        earlier = set(ids[: ids.index(step_id)])
        attempt = await self.store.queue_attempt(run_id, step_id, reopen=True)
        if attempt is None:
            raise RedoRefused(f"run {run_id} is being re-run already")
        again = message.model_copy(
            update={
                "step_id": step_id,
                "attempt": attempt,
                "pending": None,
                "resend": None,
                "outputs": {name: output for name, output in message.outputs.items() if name in earlier},
            }
        )
        await self._publish(again)
        # The re-run supersedes a dead letter the failure left: replaying that would run the step twice.
        await self.letters.delete_for(run_id, step_id)
        log.info("re-run queued", run_id=run_id, step_id=step_id, attempt=attempt)
        return {"run_id": run_id, "step_id": step_id, "attempt": attempt}

    async def _ended_run(self, run_id: str, what: str) -> dict[str, Any]:
        run = await self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"run {run_id!r} not found")
        if not RunStatus(run["status"]).terminal:
            raise RedoRefused(f"run {run_id} is still {run['status']}; {what} once it has ended")
        return run

    async def _message(self, run_id: str) -> RunMessage:
        message = await self.kept(run_id)
        if message is None:
            raise RedoRefused(
                f"no message of run {run_id} was kept (it ended without one), so it cannot be redone"
            )
        return message

    async def _publish(self, message: RunMessage) -> None:
        broker = self.runtime.broker
        try:
            await broker.publish_model(
                broker.topology.step_key(message.step.kind),
                message,
                message_id=f"{message.run_id}:{message.step_id}:{message.attempt}",
            )
        except BrokerError as exc:
            error = ErrorInfo(code=ErrorCode.INTERNAL, message=f"the broker did not take the message: {exc}")
            await self.store.restore_failed(message.run_id, message.step_id, message.attempt, error)
            raise BrokerUnavailable(f"the broker is unavailable, nothing was queued: {exc}") from exc
