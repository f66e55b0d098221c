"""A mute window's end: the run that tells what the window held.

What a mute window holds is told by the first evaluation of the alert after the window
(:mod:`services.trigger.alert_notices`). A flow checked every minute gets there by itself;
one checked every few hours would tell it hours late. So once a window is over, the trigger
starts a run of each flow whose alerts hold notices from it. The run's id is derived from the
flow, the window and the end of the window's stretch, and claimed like a scheduled slot, so
replicas start it once; a run that finds nothing held any more (the flow's own schedule came
first) tells nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import sqlalchemy as sa
import structlog

from common.contracts.flows import RunTemplate
from common.contracts.messages import RunContext, TriggerKind, utcnow
from common.platform.broker.interface import BrokerError
from common.platform.runtime import Runtime
from services.trigger.alert_store import AlertStore
from services.trigger.starter import launch, slot_run_id
from services.trigger.store import FlowStore, SlotClaim

log = structlog.get_logger(__name__)

#: How often the trigger looks for windows that ended with notices held.
INTERVAL_SECONDS = 30.0
#: How long a claimed window's end waits for its run to be started before another replica may.
LEASE = dt.timedelta(minutes=2)


class MuteEnds:
    def __init__(
        self,
        alerts: AlertStore,
        flows: FlowStore,
        runtime: Runtime,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.alerts = alerts
        self.flows = flows
        self.runtime = runtime
        self.clock = clock

    async def tick(self) -> bool:
        """Start the runs of the flows whose windows ended with notices held; False on an outage."""
        try:
            await self._start_due()
        except (sa.exc.SQLAlchemyError, OSError):
            log.exception("looking for mute windows that ended failed; retrying at the next interval")
            return False
        return True

    async def _start_due(self) -> list[str]:
        now = self.clock()
        windows = self.runtime.connections.mute_windows
        started: list[str] = []
        for flow_name, window, first_held in await self.alerts.holding():
            spec = windows.get(window)
            if spec is not None and spec.mutes(now):
                continue
            # The end of the stretch of the window that held them: the same on every replica.
            ended = (spec.ends_after(first_held) if spec is not None else None) or first_held
            slot = f"mute-end:{window}:{ended.isoformat()}"
            stored = await self.flows.get(flow_name)
            if stored is None or not stored.flow.enabled:
                # Held until the flow runs again (or, deleted, forever: nothing is told of it).
                continue
            try:
                parameters = stored.flow.bind_parameters({})
            except ValueError as exc:
                log.warning(
                    "a mute window ended but its flow cannot run on defaults", flow=flow_name, error=str(exc)
                )
                continue
            run_id = slot_run_id(flow_name, slot)
            claim = SlotClaim(flow_name, slot, run_id)
            if not await self.flows.claim([claim], lease=LEASE, now=now):
                continue
            context = RunContext(
                flow=flow_name,
                trigger=TriggerKind.SCHEDULE,
                scheduled_for=ended,
                parameters=parameters,
                timezone=stored.flow.trigger.timezone,
            )
            try:
                await launch(self.runtime.broker, RunTemplate.of(stored.flow), context, run_id)
            except BrokerError as exc:
                log.error("could not start the run at a mute window's end", flow=flow_name, error=str(exc))
                await self.flows.settle([], [claim.key])
                continue
            await self.flows.settle([claim.key])
            log.info(
                "mute window over: a run tells what it held", flow=flow_name, window=window, run_id=run_id
            )
            started.append(run_id)
        return started
