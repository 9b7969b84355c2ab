"""The names of the contract's topics, as a pure function of the deployment's prefix.

Importing this module reads no settings and builds no Faust app: the producer, the operator
commands and the simulator name topics through it; the Faust topic objects the agents subscribe
to are declared from the same names in :mod:`streams.topics`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicNames:
    """The topics of one deployment (``prefix`` lets several share a cluster)."""

    prefix: str = ""

    @property
    def detection_results(self) -> str:
        return self.prefix + "detection-results"

    @property
    def assessment_tasks(self) -> str:
        return self.prefix + "assessment-tasks"

    @property
    def risk_results(self) -> str:
        return self.prefix + "risk-assessment-results"

    @property
    def alerts(self) -> str:
        return self.prefix + "alerts"

    @property
    def main(self) -> tuple[str, str, str]:
        """The co-partitioned topics the agents consume, each with a DLQ."""
        return (self.detection_results, self.assessment_tasks, self.risk_results)

    @property
    def flow(self) -> tuple[str, str, str, str]:
        """Every topic a record passes on its way from camera to alert."""
        return (*self.main, self.alerts)

    @staticmethod
    def dlq(topic: str) -> str:
        """The dead-letter topic of ``topic``."""
        return f"{topic}.dlq"
