"""What a test run's steps say they did not do (``StepOutput.detail["dry_run"]``).

A test run (``RunContext.dry_run``) runs its Kusto queries and renders as any
run, and delivers or writes nothing: each step that holds back says so under
the ``dry_run`` key of its detail, in one of these words, which the run page
and the command line read.
"""

from __future__ import annotations

#: A control command other than ``.show``: not sent (its text is kept in the detail).
NOT_RUN_COMMAND = "not run: a control command changes the database"
#: A rendering step after a command that was not sent.
NOT_RENDERED = "not rendered: its control command was not run in a test run"
#: A copy into a database or an ingestion into Kusto: the detail has ``rows`` and a ``sample``.
NOT_WRITTEN = "not written (test run)"
#: An email or a webhook post: composed and kept as an artifact, not sent.
NOT_SENT = "not sent (test run)"
#: An email sent to the test address alone ("send a test").
SENT_TO_TEST = "sent only to the test address"
#: An alert evaluated without recording its state, transitions or notices.
NOT_RECORDED = "evaluated, not recorded: the alert's state is as it was"
#: Rows of what a write would write that a test run's output shows.
SAMPLE_ROWS = 5
