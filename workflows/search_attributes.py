"""The search attributes of Loomwork's runs: what ListRuns filters on in Temporal visibility
and what a person searches by in the Temporal UI (all Keyword, registered at startup)."""

from temporalio.common import SearchAttributeKey

TENANT = SearchAttributeKey.for_keyword("LoomworkTenant")
AGENT = SearchAttributeKey.for_keyword("LoomworkAgent")
THREAD = SearchAttributeKey.for_keyword("LoomworkThread")
RESOURCE = SearchAttributeKey.for_keyword("LoomworkResource")
WORKFLOW = SearchAttributeKey.for_keyword("LoomworkWorkflow")
# The run's id as users know it (agent run, workflow run, ingestion), and its status in
# Loomwork's terms (e.g. SUSPENDED, WAITING), which Temporal's own status cannot express.
RUN = SearchAttributeKey.for_keyword("LoomworkRun")
STATUS = SearchAttributeKey.for_keyword("LoomworkStatus")
# The schedule (its id in the tenant) that started a run; also set on the schedule itself.
SCHEDULE = SearchAttributeKey.for_keyword("LoomworkSchedule")

ALL = (TENANT, AGENT, THREAD, RESOURCE, WORKFLOW, RUN, STATUS, SCHEDULE)
