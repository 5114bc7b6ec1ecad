"""A job as every store keeps it, and the events a job publishes.

A record is flat (strings in, strings out) so a Redis hash holds it as it is; the result
and error are JSON in their OpenAI shapes, ready to serve.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

from central.schemas import ErrorDetail, ImagesResponse, JobKind, JobResource, JobStatus
from shared.errors import InvalidInput

FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
TERMINAL_EVENTS: frozenset[str] = frozenset({"done", "error", "cancelled"})
# Event ids are Redis stream ids ("<ms>-<seq>"); the memory store makes ids of that form
# too, so a Last-Event-ID is checked the same way whatever the store.
EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")


def check_event_id(value: str) -> str:
    """A client's Last-Event-ID, refused (422) unless it is one of our ids."""
    if not EVENT_ID.fullmatch(value):
        raise InvalidInput("not an event id of this job's stream", param="Last-Event-ID")
    return value


@dataclass(frozen=True)
class JobEvent:
    # queued | restarted | progress | preview | done | error | cancelled
    name: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.name in TERMINAL_EVENTS

    def encoded(self) -> str:
        return json.dumps(self.data, separators=(",", ":"))

    @classmethod
    def decoded(cls, name: str, data: str) -> JobEvent:
        return cls(name, json.loads(data))


@dataclass
class JobRecord:
    """Where a job stands: what GET /v1/jobs/{id} shows, plus who runs it and how often."""

    id: str
    kind: JobKind
    total: int
    created: float = field(default_factory=time.time)
    status: JobStatus = "queued"
    step: int = 0
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] | None = None  # the images response, as served
    error: dict[str, Any] | None = None  # {"type", "message", "param"?}
    attempt: int = 1  # 2 and up: re-run after the gateway running it stopped
    cancel: bool = False  # asked to cancel (whoever runs it acts on that)
    key: str = ""  # the API key's slot (a digest) the job counts against, if any

    @classmethod
    def new(cls, kind: JobKind, total: int, key: str | None = None) -> JobRecord:
        # Random ids, only ever used as keys of the store (never as paths).
        return cls(id=secrets.token_urlsafe(16), kind=kind, total=total, key=key or "")

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    @property
    def url(self) -> str:
        return f"/v1/jobs/{self.id}"

    # --- the flat form a store keeps ---------------------------------------------

    def fields(self) -> dict[str, str]:
        return {name: _flat(value) for name, value in asdict(self).items()}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> JobRecord:
        def number(name: str) -> float | None:
            return float(fields[name]) if fields.get(name) else None

        return cls(
            id=fields["id"],
            kind=fields["kind"],  # type: ignore[arg-type]
            total=int(fields["total"]),
            created=float(fields["created"]),
            status=fields["status"],  # type: ignore[arg-type]
            step=int(fields["step"]),
            started=number("started"),
            finished=number("finished"),
            result=json.loads(fields["result"]) if fields.get("result") else None,
            error=json.loads(fields["error"]) if fields.get("error") else None,
            attempt=int(fields.get("attempt") or 1),
            cancel=fields.get("cancel") == "1",
            key=fields.get("key", ""),
        )

    # --- what clients see ----------------------------------------------------------

    def resource(self) -> JobResource:
        """The job as GET /v1/jobs/{id} shows it (render with `exclude_unset`)."""
        resource = JobResource.model_validate(
            {
                "id": self.id,
                "object": "job",
                "kind": self.kind,
                "status": self.status,
                "created": self.created,
                "started": self.started,
                "finished": self.finished,
                "attempt": self.attempt,
                "progress": {"step": self.step, "total": self.total},
                "url": self.url,
                "events_url": f"{self.url}/events",
            }
        )
        # Assigned only when present, so exclude_unset leaves them out until then.
        if self.result is not None:
            resource.result = ImagesResponse.model_validate(self.result)
        if self.error is not None:
            resource.error = ErrorDetail.model_validate(self.error)
        return resource

    def snapshot(self) -> dict[str, Any]:
        return self.resource().model_dump(mode="json", exclude_unset=True)

    def _base(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "step": self.step, "total": self.total}

    def queued_event(self) -> JobEvent:
        return JobEvent("queued", self._base())

    def restarted_event(self, reason: str) -> JobEvent:
        return JobEvent("restarted", {**self._base(), "attempt": self.attempt, "reason": reason})

    def progress_event(self) -> JobEvent:
        return JobEvent("progress", self._base())

    def final_event(self) -> JobEvent:
        if self.status == "succeeded":
            return JobEvent("done", {**self._base(), "result": self.result})
        if self.status == "failed":
            return JobEvent("error", {**self._base(), "error": self.error})
        return JobEvent("cancelled", self._base())


def preview_event(job_id: str, step: int, total: int, images: list[str]) -> JobEvent:
    return JobEvent("preview", {"id": job_id, "step": step, "total": total, "images": images})


# The fields of a record as a store keeps it.
RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclass_fields(JobRecord))


def _flat(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else ""
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
