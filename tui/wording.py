"""What each delivery-changing action will do, in words, for the y/N question. Pure."""

from __future__ import annotations

from router.control.schema import DestinationView, Priority, StudySummary
from tui.text import plural


def waiting(view: DestinationView) -> str:
    """ "212 objects (12 studies)": what waits for a destination, in objects and studies."""
    objects = plural(view.queued_total, "object")
    if view.studies_waiting:
        return f"{objects} ({plural(view.studies_waiting, 'study', 'studies')})"
    return objects


def pause_question(view: DestinationView) -> str:
    return (
        f"Pause sending to {view.name}?\n"
        f"{waiting(view)} waiting will stay safe on this unit and will "
        f"not be sent until you resume. New studies keep arriving and wait too."
    )


def resume_question(view: DestinationView) -> str:
    return (
        f"Resume sending to {view.name}?\n{waiting(view)} waiting will be sent, most urgent first."
    )


def retry_question(view: DestinationView) -> str:
    return (
        f"Try {view.name} again now, without waiting for the next retry?\n"
        f"{waiting(view)} waiting will be tried at once."
    )


def retry_failed_question(view: DestinationView) -> str:
    return (
        f"Send again the {plural(view.failed, 'object')} that {view.name} refused for good?\n"
        f"They go back in the queue; if the cause is not fixed they will be refused again."
    )


def undelivered(summary: StudySummary) -> int:
    """How many copies of the study are not yet delivered (pending or in flight)."""
    return sum(c.pending + c.inflight for c in summary.destinations.values())


def priority_question(summary: StudySummary, priority: Priority) -> str:
    waiting = undelivered(summary)
    return (
        f"Set study {study_label(summary)} to {priority.upper()}?\n"
        f"Its {plural(waiting, 'copy', 'copies')} not yet delivered will be sent "
        f"{'before' if priority in ('stat', 'urgent') else 'after'} routine ones."
    )


def study_label(summary: StudySummary) -> str:
    """How a study is named in questions: date, modality, description (no patient data)."""
    parts = [summary.study_date, "/".join(summary.modalities), summary.description]
    return " ".join(p for p in parts if p) or summary.study_id


def hub_link(view: DestinationView) -> str:
    """A hub destination's link and the hub's receipts in one line ("" for other kinds)."""
    if view.kind != "hub":
        return ""
    words = {"up": "up", "degraded": "degraded (attempts are failing)", "down": "down"}
    return (
        f"Link {words.get(view.link, view.link or 'unknown')}. "
        f"{plural(view.at_provider, 'object')} delivered to the provider; "
        f"{view.at_hub} at the hub, not yet at the provider's PACS."
    )
