"""Durable chains: checkpoint each finished task of a chain in PostgreSQL."""

from .chain import DurableChain, WorkflowResult, durable_chain
from .context import StepContext, current_step
from .runner import instrument
from . import sweeper  # noqa: F401  (starts the pulse of held steps with a worker)

__all__ = ["DurableChain", "StepContext", "WorkflowResult", "current_step", "durable_chain", "instrument"]
