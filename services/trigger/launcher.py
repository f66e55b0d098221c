"""Starting a run: the trigger step of every routing slip.

The run's first status event carries what history needs to list it; the slip
then goes to the first step. Runs of a scheduled slot or of a chained parent
get a run id derived from that slot, so a repeated attempt to start the same
run is recognisably the same run everywhere downstream.
"""

from __future__ import annotations

import uuid

import structlog

from common.broker import Broker
from common.contracts import RunContext, RunMessage, StepOutput, StepStatus
from common.flows import Flow, new_run
from common.logs import run_context
from common.steps import emit, forward

log = structlog.get_logger(__name__)

_RUN_IDS = uuid.UUID("5d1f2c36-8a4e-4f0b-9e0a-6c1f0b7a3d21")


def slot_run_id(flow: str, slot: str) -> str:
    """The run id of *flow*'s run for *slot* (a scheduled instant or a parent run)."""
    return uuid.uuid5(_RUN_IDS, f"{flow}\n{slot}").hex


async def launch(broker: Broker, flow: Flow, context: RunContext, run_id: str) -> RunMessage:
    """Publish the run's start; raises BrokerError if the broker did not take it."""
    message = new_run(flow, context, run_id)
    with run_context(message.run_id, message.step_id, message.attempt, flow=flow.name, service="trigger"):
        started = message.submitted_at
        await emit(broker, message, StepStatus.RUNNING, started_at=started, with_run=True)
        output = StepOutput(detail={"trigger": context.trigger.value})
        await forward(broker, message, output)
        await emit(broker, message, StepStatus.SUCCEEDED, started_at=started, output=output)
        log.info("run started", trigger=context.trigger.value)
    return message
