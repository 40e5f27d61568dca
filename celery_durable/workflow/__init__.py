"""Durable workflows: any canvas whose every finished task is checkpointed in PostgreSQL."""

from .chain import DurableChain, DurableWorkflow, WorkflowResult, durable, durable_chain
from .context import StepContext, current_step
from .runner import instrument
from . import sweeper  # noqa: F401  (starts the pulse of held steps with a worker)

__all__ = ["DurableChain", "DurableWorkflow", "StepContext", "WorkflowResult", "current_step", "durable",
           "durable_chain", "instrument"]
