"""Usage and cost: the ledger of model tokens per tenant, agent, model and run, the price
table that turns tokens into cost, and the per-tenant quotas checked as runs start."""
