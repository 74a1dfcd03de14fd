"""A tool's recovery policies together, and how they compose into its pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from host.recovery.retry import Retry

if TYPE_CHECKING:
    from host.calls import Layer


class ToolRecovery(BaseModel):
    """The recovery policies of one tool (a ``[tools.<name>]`` table of a config file,
    a value of ``Host(recovery={...})``, or what ``@tool(retry=...)`` sets)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    retry: Retry | None = None

    def layers(self) -> list[Layer]:
        """The layers of these policies, outermost first: fallback, total timeout, retry,
        circuit breaker, attempt timeout (Polly v8's order)."""
        layers: list[Layer] = []
        if self.retry is not None:
            layers.append(self.retry.layer())
        return layers

    def merged(self, more_specific: ToolRecovery) -> ToolRecovery:
        """These policies with each one ``more_specific`` sets put in its place."""
        return self.model_copy(update={name: getattr(more_specific, name)
                                       for name in more_specific.model_fields_set})
