"""Glyphs the Linux text console's font has: ASCII, basic box drawing and full blocks.

Textual draws scrollbars with eighth-blocks that the console font lacks; the console uses a
full-block scrollbar instead (installed by the app). ``ALLOWED`` is what tests check every
rendered screen against.
"""

from __future__ import annotations

import string
from typing import ClassVar

from textual.scrollbar import ScrollBarRender

BOX_DRAWING = "─│┌┐└┘├┤┬┴┼═║╔╗╚╝╠╣╦╩╬"
BLOCKS = "█▌▐▀▄░▒▓"
ALLOWED = frozenset(string.printable.replace("\t", "").replace("\r", "") + "\n" + BOX_DRAWING)
ALLOWED_WITH_BLOCKS = ALLOWED | frozenset(BLOCKS) | frozenset("\xa0")


class ConsoleScrollBarRender(ScrollBarRender):
    """A scrollbar of whole cells only: the thumb is a full block, the track blank."""

    VERTICAL_BARS: ClassVar[list[str]] = ["█"] * 7 + [" "]
    HORIZONTAL_BARS: ClassVar[list[str]] = ["█"] * 7 + [" "]
