"""The three example workflows of the seed, registered in demo mode on every worker and server.

- `order-pipeline` (linear): validate -> process -> store (a note in Postgres, exactly
  once per run however often the step is retried) -> notify.
- `ticket-triage` (branching): classify -> urgent / billing / default path -> reply; the
  paths merge into one reply step.
- `expense-approval` (suspend/resume): submit -> approve (suspends until a person
  decides) -> settle, with the decision merged into the result.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from loomwork.demo.tools import NoteTool, SaveNoteArgs
from loomwork.flows.definition import Workflow
from loomwork.flows.nodes import step
from loomwork.flows.registry import WorkflowRegistry
from loomwork.flows.step_context import StepContext
from loomwork.retries import RetryPolicy
from loomwork.tools import ToolContext

# -- linear: order pipeline ---------------------------------------------------------------


class OrderLine(BaseModel):
    sku: str = Field(min_length=1)
    quantity: int = Field(gt=0)
    unit_price: float = Field(ge=0)


class Order(BaseModel):
    customer: str = Field(min_length=1)
    country: str = Field(default="US", min_length=2, max_length=2)
    lines: list[OrderLine] = Field(min_length=1)


class ValidOrder(Order):
    order_id: str


class PricedOrder(BaseModel):
    order_id: str
    customer: str
    subtotal: float
    tax: float
    total: float


class StoredOrder(PricedOrder):
    note_id: int


class OrderResult(BaseModel):
    order_id: str
    total: float
    note_id: int
    notified: str


class InvalidOrder(Exception):
    """A business rule rejected the order; retrying would not help."""


_TAX_RATES = {"US": 0.07, "DE": 0.19, "FR": 0.20, "GB": 0.20}
_MAX_ORDER_TOTAL = 100_000.0


@step(
    "validate",
    input=Order,
    output=ValidOrder,
    retry=RetryPolicy(non_retryable_error_types=("InvalidOrder",)),
)
async def validate_order(order: Order, ctx: StepContext) -> ValidOrder:
    """Check business rules: a country we ship to, no oversized order."""
    if order.country.upper() not in _TAX_RATES:
        raise InvalidOrder(f"we do not ship to {order.country!r}")
    if sum(line.quantity * line.unit_price for line in order.lines) > _MAX_ORDER_TOTAL:
        raise InvalidOrder("orders over 100000 need a sales contract")
    return ValidOrder(**order.model_dump(), order_id=f"ord-{ctx.run_id}")


@step("process", input=ValidOrder, output=PricedOrder)
async def price_order(order: ValidOrder, ctx: StepContext) -> PricedOrder:
    """Price the order and add its country's tax."""
    subtotal = round(sum(line.quantity * line.unit_price for line in order.lines), 2)
    tax = round(subtotal * _TAX_RATES[order.country.upper()], 2)
    return PricedOrder(
        order_id=order.order_id,
        customer=order.customer,
        subtotal=subtotal,
        tax=tax,
        total=round(subtotal + tax, 2),
    )


@step("store", input=PricedOrder, output=StoredOrder)
async def store_order(order: PricedOrder, ctx: StepContext) -> StoredOrder:
    """Save the order as a note, once per run (keyed by the step's idempotency key)."""
    saved = await NoteTool(ctx.services["db"]).save(
        SaveNoteArgs(
            title=f"order {order.order_id}",
            body=f"{order.customer}: total {order.total:.2f} (tax {order.tax:.2f})",
        ),
        ToolContext(tenant=ctx.tenant, run_id=f"wf/{ctx.run_id}", tool_call_id=ctx.path),
    )
    return StoredOrder(**order.model_dump(), note_id=int(str(saved["note_id"])))


@step("notify", input=StoredOrder, output=OrderResult)
async def notify_customer(order: StoredOrder, ctx: StepContext) -> OrderResult:
    """Send the confirmation (a log line here) and report completion."""
    return OrderResult(
        order_id=order.order_id,
        total=order.total,
        note_id=order.note_id,
        notified=f"confirmation for {order.order_id} sent to {order.customer}",
    )


def order_pipeline() -> Workflow:
    return (
        Workflow(
            "order-pipeline",
            input=Order,
            output=OrderResult,
            description="Linear: validate -> process -> store -> notify.",
        )
        .then(validate_order)
        .then(price_order)
        .then(store_order)
        .then(notify_customer)
    )


# -- branching: ticket triage -----------------------------------------------------------


class Ticket(BaseModel):
    subject: str = Field(min_length=1)
    body: str = ""
    customer_tier: str = "standard"


class ClassifiedTicket(Ticket):
    category: str
    urgent: bool


class Handling(BaseModel):
    queue: str
    sla_hours: int
    note: str


class TicketReply(BaseModel):
    queue: str
    sla_hours: int
    reply: str


@step("classify", input=Ticket, output=ClassifiedTicket)
async def classify_ticket(ticket: Ticket, ctx: StepContext) -> ClassifiedTicket:
    """Sort the ticket by keywords."""
    text = f"{ticket.subject} {ticket.body}".lower()
    category = "billing" if any(w in text for w in ("invoice", "refund", "charge")) else "general"
    urgent = any(w in text for w in ("outage", "down", "urgent")) or ticket.customer_tier == "vip"
    return ClassifiedTicket(**ticket.model_dump(), category=category, urgent=urgent)


@step("escalate", input=ClassifiedTicket, output=Handling)
async def escalate(ticket: ClassifiedTicket, ctx: StepContext) -> Handling:
    """Page the on-call engineer."""
    return Handling(queue="on-call", sla_hours=1, note=f"paged on-call for {ticket.subject!r}")


@step("billing", input=ClassifiedTicket, output=Handling)
async def route_billing(ticket: ClassifiedTicket, ctx: StepContext) -> Handling:
    """Hand over to the billing team."""
    return Handling(queue="billing", sla_hours=24, note="billing will check the charge")


@step("general", input=ClassifiedTicket, output=Handling)
async def route_general(ticket: ClassifiedTicket, ctx: StepContext) -> Handling:
    """The default queue."""
    return Handling(queue="support", sla_hours=48, note="thanks, we are on it")


@step("reply", input=Handling, output=TicketReply)
async def reply_to_customer(handling: Handling, ctx: StepContext) -> TicketReply:
    """Answer the customer with what happens next (every path merges here)."""
    return TicketReply(
        queue=handling.queue,
        sla_hours=handling.sla_hours,
        reply=f"{handling.note} (queue {handling.queue}, within {handling.sla_hours} h)",
    )


def is_urgent(ticket: ClassifiedTicket) -> bool:
    return ticket.urgent


def is_billing(ticket: ClassifiedTicket) -> bool:
    return ticket.category == "billing"


def ticket_triage() -> Workflow:
    return (
        Workflow(
            "ticket-triage",
            input=Ticket,
            output=TicketReply,
            description="Branching: classify -> urgent / billing / default -> reply.",
        )
        .then(classify_ticket)
        .branch(
            "route",
            [(is_urgent, escalate), (is_billing, route_billing)],
            default=route_general,
            description="Pick the path for the ticket",
        )
        .then(reply_to_customer)
    )


# -- suspend / resume: expense approval -------------------------------------------------


class Expense(BaseModel):
    employee: str = Field(min_length=1)
    amount: float = Field(gt=0)
    reason: str = Field(min_length=1)


class SubmittedExpense(Expense):
    reference: str


class ApprovalRequest(BaseModel):
    reference: str
    employee: str
    amount: float
    reason: str


class ApprovalDecision(BaseModel):
    approved: bool
    approver: str = Field(min_length=1)
    comment: str = ""


class ApprovedExpense(SubmittedExpense):
    approved: bool
    approver: str
    comment: str


class Settlement(BaseModel):
    reference: str
    approved: bool
    approver: str
    paid: float
    message: str


AUTO_APPROVE_LIMIT = 100.0


@step("submit", input=Expense, output=SubmittedExpense)
async def submit_expense(expense: Expense, ctx: StepContext) -> SubmittedExpense:
    """Record the claim."""
    return SubmittedExpense(**expense.model_dump(), reference=f"exp-{ctx.run_id}")


@step(
    "approve",
    input=SubmittedExpense,
    output=ApprovedExpense,
    suspend=ApprovalRequest,
    resume=ApprovalDecision,
    description="A person approves or rejects claims above the auto-approval limit",
)
async def approve_expense(expense: SubmittedExpense, ctx: StepContext) -> ApprovedExpense:
    if expense.amount <= AUTO_APPROVE_LIMIT:
        return ApprovedExpense(
            **expense.model_dump(), approved=True, approver="auto", comment="under the limit"
        )
    decision = ctx.resume_data
    if not isinstance(decision, ApprovalDecision):
        ctx.suspend(
            ApprovalRequest(**expense.model_dump(exclude={"employee"}), employee=expense.employee)
        )
    return ApprovedExpense(**expense.model_dump(), **decision.model_dump())


@step("settle", input=ApprovedExpense, output=Settlement)
async def settle_expense(expense: ApprovedExpense, ctx: StepContext) -> Settlement:
    """Pay an approved claim; close a rejected one."""
    paid = expense.amount if expense.approved else 0.0
    verdict = "paid" if expense.approved else "rejected"
    return Settlement(
        reference=expense.reference,
        approved=expense.approved,
        approver=expense.approver,
        paid=paid,
        message=f"{expense.reference} {verdict} by {expense.approver}",
    )


def expense_approval() -> Workflow:
    return (
        Workflow(
            "expense-approval",
            input=Expense,
            output=Settlement,
            description="Suspend/resume: submit -> approve (a person decides) -> settle.",
        )
        .then(submit_expense)
        .then(approve_expense)
        .then(settle_expense)
    )


def register_example_workflows(registry: WorkflowRegistry) -> None:
    """Register the seed examples (a second call is a no-op)."""
    for build in (order_pipeline, ticket_triage, expense_approval):
        workflow = build().commit()
        if not registry.contains(workflow.id, workflow.version):
            registry.register(workflow)
