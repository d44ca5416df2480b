"""DICOM names a configuration may use, checked against pydicom's dictionaries.

Routing rules name attributes by keyword (``StationName``) and SOP classes by UID or by
keyword (``CTImageStorage``); a misspelling is an error with a did-you-mean, never a rule that
silently matches nothing.
"""

from __future__ import annotations

import difflib
import re
from functools import cache

from pydicom._uid_dict import UID_dictionary  # pydicom.uid uses it but does not export it
from pydicom.datadict import dictionary_VR, keyword_dict

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CODE = re.compile(r"^[A-Z0-9_ ]{1,16}$")


def check_keyword(value: str) -> str:
    """Return ``value`` if it is a DICOM attribute keyword a rule can test; else ValueError.

    File meta (0002,xxxx), command (0000,xxxx) and pixel-data-and-after (7FE0,xxxx and up)
    attributes are refused: the header reader never sees them in the data set.
    """
    tag = keyword_dict.get(value)
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {value!r}{_suggest(value, _keywords())}")
    group = tag >> 16
    if group in (0x0000, 0x0002, 0xFFFE) or group >= 0x7FE0:
        raise ValueError(
            f"{value!r} ({group:04X},{tag & 0xFFFF:04X}) is not in the data set header that "
            "rules see; use modality, sop_class or a header attribute instead"
        )
    return value


def is_code_string(keyword: str) -> bool:
    """Whether the attribute is a code string (VR CS), whose values are codes, not PHI."""
    try:
        return bool(dictionary_VR(keyword_dict[keyword]) == "CS")
    except KeyError:
        return False


def resolve_sop_class(value: str) -> str:
    """Return the SOP Class UID for a UID or a SOP class keyword such as "CTImageStorage"."""
    text = value.strip()
    if _UID.match(text) and len(text) <= 64:
        return text
    uid = _sop_class_keywords().get(text)
    if uid is None:
        hint = _suggest(text, sorted(_sop_class_keywords()))
        raise ValueError(
            f"{value!r} is neither a UID (digits and dots) nor a SOP class keyword such as "
            f"'CTImageStorage'{hint}"
        )
    return uid


def sop_class_name(uid: str) -> str:
    """A readable name for a SOP Class UID ("CT Image Storage"), or the UID itself."""
    entry = UID_dictionary.get(uid)
    return str(entry[0]) if entry else uid


def check_modality(value: str) -> str:
    """Return a modality code ("CT", "MR") or raise ValueError; codes are upper case."""
    text = value.strip()
    if _CODE.match(text):
        return text
    if _CODE.match(text.upper()):
        raise ValueError(
            f"modality codes are upper case: {value!r} (did you mean {text.upper()!r}?)"
        )
    raise ValueError(f'{value!r} is not a modality code such as "CT", "MR" or "US"')


@cache
def _keywords() -> list[str]:
    return sorted(keyword_dict)


@cache
def _sop_class_keywords() -> dict[str, str]:
    return {str(entry[4]): uid for uid, entry in UID_dictionary.items() if entry[1] == "SOP Class"}


def _suggest(value: str, choices: list[str]) -> str:
    by_lower = {choice.lower(): choice for choice in choices}
    close = [by_lower[value.lower()]] if value.lower() in by_lower else []
    close = close or difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
