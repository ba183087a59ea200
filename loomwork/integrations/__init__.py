"""Integrations: signed webhooks routed to runs, OAuth connections with fresh tokens."""
