"""Demo content, registered only in demo mode (`loomwork up --demo`, LOOMWORK_DEMO=true):
demo tools (`send_email` sends nothing) and agent, the seed's example workflows, and the
offline model for a process with no model configured. See `loomwork.demo.mode`."""
