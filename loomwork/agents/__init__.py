"""Agents: definitions, tools, the events a run publishes and the steps of a run."""
