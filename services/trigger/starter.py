"""Starting a run: the trigger step of every routing slip.

The trigger step does nothing but start the run, so it reports once: one
``succeeded`` event that also carries what history needs to list the run.
The slip then goes to the first step, only after the broker confirmed that
event, so history hears of the run before any later step of it reports.
Runs of a scheduled slot or of a chained parent get a run id derived from
that slot, so a repeated attempt to start the same run is recognisably the
same run everywhere downstream. Each start is the root span of the run's
trace, whose context the slip carries on (:mod:`common.platform.tracing`).
"""

from __future__ import annotations

import uuid

import structlog

from common.contracts.flows import RunTemplate
from common.contracts.messages import RunContext, RunMessage, StepOutput, StepStatus
from common.platform import tracing
from common.platform.broker.interface import Broker
from common.platform.steps import emit, forward

log = structlog.get_logger(__name__)

_RUN_IDS = uuid.UUID("5d1f2c36-8a4e-4f0b-9e0a-6c1f0b7a3d21")


def slot_run_id(flow: str, slot: str) -> str:
    """The run id of *flow*'s run for *slot* (a scheduled instant or a parent run)."""
    return uuid.uuid5(_RUN_IDS, f"{flow}\n{slot}").hex


async def launch(broker: Broker, template: RunTemplate, context: RunContext, run_id: str) -> RunMessage:
    """Publish the run's start; raises BrokerError if the broker did not take it.

    The caller binds the run to its log lines (:func:`~common.platform.logs.run_context`), as it
    sees fit: a scheduler starting thousands of runs at once binds it more cheaply.
    """
    with tracing.run_started(template.new_run(context, run_id)) as message:
        output = StepOutput(detail={"trigger": context.trigger.value})
        started = message.submitted_at
        await emit(broker, message, StepStatus.SUCCEEDED, started_at=started, output=output, with_run=True)
        await forward(broker, message, output)
        log.info("run started", trigger=context.trigger.value)
    return message
