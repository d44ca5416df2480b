"""The full-screen notice shown while the router service does not answer."""

from __future__ import annotations

from textual.widgets import Static

from tui.setup_notice import setup_text
from tui.text import ago

WHAT_TO_DO = """\
Studies already on this unit stay safe on its disk.
While this shows, the unit may not be receiving or sending studies.

What to do:
  1. Wait one minute. The service restarts by itself; this screen
     goes away on its own when it answers again.
  2. If this stays for more than 5 minutes, switch the unit off and
     on again with its power button.
  3. If it is still here after that, call IT support and read them
     the line below."""


class UnreachablePanel(Static):
    """Hidden unless the app has the ``-lost`` class; ``show`` fills in the details."""

    def show(
        self,
        problem: str,
        last_answer_at: float | None,
        now: float,
        socket: str,
        *,
        refused: bool = False,
        setup_problems: list[str] | None = None,
        can_set_up: bool = False,
    ) -> None:
        """Redraw with the latest error and when the service last answered. ``refused``: the
        service answers but will not serve this login (not an operator)."""
        if setup_problems is not None:
            self.update(setup_text(setup_problems, can_set_up=can_set_up))
            return
        if refused:
            self.update(
                "!! THIS LOGIN MAY NOT USE THE ROUTER SERVICE !!\n\n"
                "The router is running, but it only answers its operators.\n"
                "Log in as the clinic's operator account, or ask IT to add\n"
                "this login to the unit's operators group.\n\n"
                f"For IT: {problem}" + (f" (control socket {socket})" if socket else "")
            )
            return
        last = (
            "The service has not answered since this console started."
            if last_answer_at is None
            else f"Last answer {ago(now - last_answer_at)} ago. Trying again every 2 s."
        )
        self.update(
            "!! ROUTER SERVICE NOT RESPONDING !!\n\n"
            f"{WHAT_TO_DO}\n\n{last}\nFor IT: {problem}"
            + (f" (control socket {socket})" if socket else "")
        )
