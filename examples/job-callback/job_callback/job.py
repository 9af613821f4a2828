"""What a job request is: checked when a workflow starts, and again whenever a worker decodes it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

JobName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")]
ParamValue = Annotated[str, StringConstraints(max_length=200)] | int


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: JobName
    params: Annotated[dict[JobName, ParamValue], Field(max_length=20)] = {}
    # How long the job runs on the jobs service (a stand-in: it really waits that long).
    duration_seconds: Annotated[float, Field(gt=0, le=86_400)]
    # How long the workflow waits for the callback before it gives up on the job and cancels it.
    callback_timeout_seconds: Annotated[int, Field(ge=1, le=7 * 86_400)]
    # The stand-in's knob for how the job ends (a real service has none: its jobs just end).
    simulate: Literal["succeed", "fail", "never_call_back", "call_back_twice"] = "succeed"
