"""The ``export_to_file`` step: an earlier query's stored result as a CSV or Parquet file in the
blob store.

The result is streamed from the blob store a chunk at a time into the file
(:mod:`services.query_worker.export_files`), which is itself streamed into a blob under the
run's artifacts: it appears whole or not at all, is linked from the run's emails and webhook
posts through the history service, and goes when the run's retention ends. A redelivered or
retried step writes its file again under its own attempt's key.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any

from common.contracts.actions import ExportToFile
from common.contracts.errors import AdxflowError, ArtifactMissing
from common.contracts.flows import Flow, flow_of, step_spec
from common.contracts.messages import RunMessage, StepOutput, StepStatus
from common.contracts.templates import TemplateError, render_text, template_context
from common.platform.blobs.interface import BlobWriter, artifact_key, artifact_url
from common.platform.runtime import Runtime
from services.query_worker.copying import described_columns

if TYPE_CHECKING:
    from services.query_worker.export_files import ExportFile

#: What a file's name keeps: what a blob key, a URL and every file system take as they are.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
#: Characters of a name before its extension.
NAME_LENGTH = 150


def file_name(text: str, extension: str) -> str:
    """*text* as a file's name: unsafe characters as ``_``, no leading dot, *extension* at the end.

    A ValueError when nothing is left of it.
    """
    name = _UNSAFE.sub("_", text.strip()).strip("._")
    if name.lower().endswith(extension):
        name = name[: -len(extension)].rstrip("._")
    name = name[:NAME_LENGTH].rstrip("._")
    if not name:
        raise ValueError(f"{text!r} leaves no letter or digit for a file name")
    return name + extension


class ExportStep:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def perform(self, message: RunMessage) -> StepOutput:
        flow = flow_of(message)
        spec = step_spec(message, flow)
        if not isinstance(spec, ExportToFile):
            raise AdxflowError(f"step {spec.id!r} ({spec.action}) exports nothing")
        source = message.outputs.get(spec.source)
        if source is None or source.status is not StepStatus.SUCCEEDED or "result" not in source.artifacts:
            status = source.status.value if source is not None else "not run"
            raise ArtifactMissing(
                f"steps.{spec.id}.source: {spec.source!r} has no result to export ({status})"
            )
        described = list(described_columns(source.detail.get("columns", [])))
        # The files' module brings pyarrow (some 65 MB resident): imported by a worker's first export,
        # not by every query worker.
        from services.query_worker.export_files import file_type

        extension, content_type = file_type(spec.format, spec.codec)
        name = _name(message, flow, spec, extension)
        key = artifact_key(message.run_id, message.step_id, message.attempt, name)
        async with self.runtime.blobs.writer(key, content_type) as blob:
            file = _file(spec, blob)
            started = False
            async for columns, rows in self.runtime.blobs.result_rows(source.artifacts["result"].key):
                if not started:
                    await file.start(columns or described)
                    started = True
                await file.add(rows)
            if not started:
                await file.start(described)
            await file.finish()
        ref = blob.ref
        detail: dict[str, Any] = {
            "source": spec.source,
            "format": spec.format,
            "compression": spec.codec,
            "rows": file.rows,
            # The source stopped at a result cap (on_too_large: truncate): the file has what it read.
            "truncated": bool(source.detail.get("truncated")),
            "bytes": ref.size,
            **file.detail(),
            "file": {
                "name": name,
                "key": ref.key,
                "url": artifact_url(self.runtime.history_url, ref.key) if self.runtime.history_url else None,
                "format": spec.format,
                "size": ref.size,
            },
        }
        return StepOutput(
            row_count=file.rows,
            columns=[column.name for column in described],
            artifacts={"file": ref},
            detail=detail,
        )


def _file(spec: ExportToFile, blob: BlobWriter) -> ExportFile:
    from services.query_worker.export_files import ROW_GROUP_ROWS, CsvFile, ParquetFile

    if spec.format == "parquet":
        rows = spec.row_group_rows or ROW_GROUP_ROWS
        return ParquetFile(blob, compression=spec.codec, row_group_rows=rows)
    return CsvFile(blob, compression=spec.codec)


def _name(message: RunMessage, flow: Flow, spec: ExportToFile, extension: str) -> str:
    """The file's name: the step's template rendered, or the flow, the step and the run's time."""
    field = f"steps.{spec.id}.name"
    if spec.name is None:
        moment = (message.context.scheduled_for or message.submitted_at).astimezone(dt.UTC)
        text = f"{flow.name}-{spec.id}-{moment.strftime('%Y%m%dT%H%M%SZ')}"
    else:
        text = render_text(spec.name, template_context(message), field=field)
    try:
        return file_name(text, extension)
    except ValueError as exc:
        raise TemplateError(f"{field}: {exc}") from None
