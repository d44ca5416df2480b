"""Governed tag changes for one destination: set, remove, map a value.

Applied only to the copy being sent; the spool keeps the original bytes. Returns the keywords
changed (never the values, which may be patient data) for the object's history.
"""

from __future__ import annotations

from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataset import Dataset

from router.config.model import TagChanges

_INTEGER_VRS = {"US", "SS", "UL", "SL", "UV", "SV"}


def apply_changes(dataset: Dataset, changes: TagChanges) -> list[str]:
    """Change ``dataset`` in place; returns the keywords that were changed, in order."""
    changed: list[str] = []
    for keyword, value in changes.set.items():
        vr = dictionary_VR(keyword_dict[keyword])
        setattr(dataset, keyword, int(value) if vr in _INTEGER_VRS else value)
        changed.append(keyword)
    for keyword in changes.remove:
        if keyword in dataset:
            del dataset[keyword]
            changed.append(keyword)
    for keyword, mapping in changes.map.items():
        if keyword in dataset and str(dataset[keyword].value) in mapping:
            dataset[keyword].value = mapping[str(dataset[keyword].value)]
            changed.append(keyword)
    return changed
