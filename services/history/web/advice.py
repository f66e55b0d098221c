"""What to try when a step failed: one concrete line per error code."""

from __future__ import annotations

from common.contracts.messages import ErrorCode

ADVICE: dict[ErrorCode, str] = {
    ErrorCode.INVALID_JOB: (
        "The job document was refused: fix the field the message names and submit it again."
    ),
    ErrorCode.UNKNOWN_CONNECTION: (
        "The flow names a connection this server does not have: use one of the configured "
        "connections (GET /v1/connections) or ask the operator to add it."
    ),
    ErrorCode.KUSTO_SYNTAX_ERROR: (
        "The query does not parse: look at the position the message gives in the query text "
        "shown below and run it in the Kusto query editor."
    ),
    ErrorCode.KUSTO_SEMANTIC_ERROR: (
        "Kusto does not know a name in the query: check the table and column names in the query "
        "text shown below against the database the flow uses."
    ),
    ErrorCode.KUSTO_REQUEST_DENIED: (
        "The connection's identity may not run this: grant it viewer (or admin, for commands) "
        "on the database, or use another connection."
    ),
    ErrorCode.KUSTO_THROTTLED: (
        "The cluster was busy; the step was retried automatically. If it keeps failing, "
        "schedule the flow at a quieter time or make the query cheaper."
    ),
    ErrorCode.KUSTO_SERVICE_ERROR: (
        "The cluster failed to answer: re-run from the failed step; if it persists, check the "
        "cluster's health in the Azure portal."
    ),
    ErrorCode.KUSTO_UNAVAILABLE: (
        "The cluster could not be reached after several tries: check that it is running and "
        "reachable from this server, then re-run from the failed step."
    ),
    ErrorCode.REQUEST_TIMEOUT: (
        "The query ran longer than its timeout: filter earlier (a time range first), "
        "summarize in KQL, or raise the step's timeout."
    ),
    ErrorCode.RESULT_TOO_LARGE: (
        "The result exceeded the row or size cap: summarize or take fewer rows in KQL, "
        "or set max_rows with on_too_large: truncate on the step."
    ),
    ErrorCode.UNSUPPORTED_OPERATOR: (
        "The query uses an operator the connector refuses (fork, facet, evaluate): rewrite it "
        "without, or ask the operator to allow it."
    ),
    ErrorCode.RENDER_FAILED: (
        "The result could not be drawn as this chart: pick a chart kind that fits its columns "
        "(a datetime and numbers for a time chart, a label and a number for a pie)."
    ),
    ErrorCode.SMTP_REJECTED: (
        "The mail server refused the message: check the recipient addresses and the sender "
        "the relay accepts, then resend the email."
    ),
    ErrorCode.SMTP_UNAVAILABLE: (
        "The mail server could not be reached after several tries: check the SMTP relay, "
        "then resend the email."
    ),
    ErrorCode.EMAIL_TOO_LARGE: (
        "The email is larger than the limit even with attachments zipped or linked: send fewer "
        "rows (table_rows, take in KQL) or fewer attachments."
    ),
    ErrorCode.RECIPIENT_NOT_ALLOWED: (
        "A recipient is outside the domains this server may mail: use an address in an allowed "
        "domain, or ask the operator to allow the domain."
    ),
    ErrorCode.WEBHOOK_REJECTED: (
        "The webhook answered with a client error: check its URL and the payload it expects, then resend."
    ),
    ErrorCode.WEBHOOK_UNAVAILABLE: (
        "The webhook could not be reached after several tries: check that the receiver is up, then resend."
    ),
    ErrorCode.TEMPLATE_ERROR: (
        "A template in the flow failed: check the names it uses (steps.<id>.row_count, "
        "run.parameters.<name>) against the flow's step ids and parameters."
    ),
    ErrorCode.ASYNC_OPERATION_FAILED: (
        "The cluster's async operation failed: read its status with .show operations on the "
        "cluster, fix the command, and re-run."
    ),
    ErrorCode.INVALID_PARAMETERS: (
        "A parameter value does not fit its declared type: start the run again with values "
        "matching the flow's parameters."
    ),
    ErrorCode.STALLED: (
        "No service reported progress for too long: check that every service is running and "
        "consuming its queue, then re-run from the failed step."
    ),
    ErrorCode.ARTIFACT_MISSING: (
        "A stored result is gone from the blob store: check the blob store's retention, then re-run the flow."
    ),
    ErrorCode.DELIVERY_LIMIT: (
        "The step's service took its message again and again without finishing it (it crashed, hung "
        "or was killed each time): look at that service's log for this run id, fix it, then replay "
        "the dead letter or re-run from the failed step."
    ),
    ErrorCode.TOO_MANY_ITEMS: (
        "The for_each step's source has more rows than its max_items: filter the query further, "
        "raise max_items (up to the operator's maximum), or set on_too_many: truncate."
    ),
    ErrorCode.ITERATIONS_FAILED: (
        "One or more iterations of the scope failed: open the failed iterations listed under the "
        "step and re-run from a failed iteration; only that iteration runs again."
    ),
    ErrorCode.TABLE_NOT_ALLOWED: (
        "The step writes a table its database connection does not allow: use one of the connection's "
        "tables, or ask the operator to add it to the connection's tables."
    ),
    ErrorCode.TABLE_MISMATCH: (
        "The target table exists with columns that do not fit the result: add or retype the column the "
        "message names, rename the result's column in the query, or write another table."
    ),
    ErrorCode.UNKNOWN_COLUMN: (
        "A key column of the step is not a column of the result: name one of the columns the message "
        "lists, or project it in the query."
    ),
    ErrorCode.DATABASE_UNAVAILABLE: (
        "The database could not be reached, or the connection broke, after several tries; nothing was "
        "written. Check that it is running and reachable from this server, then re-run from the step."
    ),
    ErrorCode.DATABASE_ERROR: (
        "The database refused the copy; nothing was written. Fix what the message names (a value, a "
        "constraint, a permission), then re-run from the failed step."
    ),
    ErrorCode.FILE_UNAVAILABLE: (
        "The file to ingest could not be fetched after several tries (its server answered an error or "
        "the connection broke); nothing was ingested. Check that it is there and reachable from this "
        "server, then re-run from the step."
    ),
    ErrorCode.INTERNAL: (
        "An unexpected error: look at the service's log for this run id, then re-run from the failed step."
    ),
}


def advice_for(code: str | None) -> str | None:
    if code is None:
        return None
    try:
        # A code of a newer release reads as an ErrorCode of its own, with no advice here.
        return ADVICE.get(ErrorCode(code))
    except ValueError:
        return None
