"""Which of the stack's services swarm may place on a node, from their placement constraints.

A new node pulls only the images of those services (tasks/pull.yml): a worker has no use for
Prometheus' image, a node without the database label none for PostgreSQL's.
"""

from __future__ import annotations

import re
from typing import Any

# Swarm's constraint syntax: `<attribute> == <value>` or `<attribute> != <value>`.
CONSTRAINT = re.compile(r"^\s*(?P<attribute>\S+)\s*(?P<operator>==|!=)\s*(?P<value>.*?)\s*$")


def constraint_allows(constraint: str, role: str, labels: dict[str, str]) -> bool:
    """Whether a node with this role and these node labels meets one constraint.

    Attributes other than the node's role and labels (node.id, node.hostname, engine labels, ...) are
    not known before the node joins: they are taken as met, so such a service's image is pulled.
    """
    match = CONSTRAINT.match(constraint)
    if match is None:
        return True
    attribute, operator, value = match["attribute"], match["operator"], match["value"]
    if attribute == "node.role":
        actual: str | None = role
    elif attribute.startswith("node.labels."):
        actual = labels.get(attribute.removeprefix("node.labels."))
    else:
        return True
    # Swarm compares case-insensitively; a missing label is unequal to every value.
    equal = actual is not None and actual.lower() == value.lower()
    return equal if operator == "==" else not equal


def placeable_images(services: list[dict[str, Any]], role: str, labels: dict[str, Any]) -> list[str]:
    """The images of the services whose every constraint the node meets, once each, in order.

    `services` holds one {"image": ..., "constraints": [...] or None} per service.
    """
    node_labels = {str(key): str(value) for key, value in (labels or {}).items()}
    images: list[str] = []
    for service in services:
        constraints = service.get("constraints") or []
        if all(constraint_allows(c, role, node_labels) for c in constraints) and service["image"] not in images:
            images.append(service["image"])
    return images


class FilterModule:
    """Ansible's entry point for the filters of this role."""

    def filters(self) -> dict[str, Any]:
        return {"swarm_placeable_images": placeable_images}
