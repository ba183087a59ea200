"""WebhookDelivery: route one accepted webhook durably (id `webhook/<tenant>/<source>/<delivery>`).

The HTTP endpoint answers 2xx only once this workflow is started, so a crash afterwards
loses nothing: the routing activity is retried until it lands, and records its outcome.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.retries import BACKGROUND_HEARTBEAT_TIMEOUT

with workflow.unsafe.imports_passed_through():
    from loomwork.integrations.routing import RouteOutcome, WebhookEvent

ROUTE_WEBHOOK = "webhook_route"


@workflow.defn(name="WebhookDelivery")
class WebhookDeliveryWorkflow:
    @workflow.run
    async def run(self, event: WebhookEvent) -> RouteOutcome:
        return await workflow.execute_activity(
            ROUTE_WEBHOOK,
            event,
            result_type=RouteOutcome,
            heartbeat_timeout=BACKGROUND_HEARTBEAT_TIMEOUT,
            start_to_close_timeout=timedelta(minutes=5),
            schedule_to_close_timeout=timedelta(days=1),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                backoff_coefficient=2.0,
                maximum_interval=timedelta(minutes=1),
            ),
            summary=f"route {event.event_type or 'event'} {event.delivery_id}",
        )
