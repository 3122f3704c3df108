"""LamRA's text convention, shared by its embedder, its rerank prompts and the release's prompts.

LamRA's M-BEIR data loaders (``format_string``) clean every query and candidate text the same way; the
public V-Retrver release builds its prompts from LamRA's rerank messages, so the texts a released
checkpoint read, and those its evaluation parquets hold, are in this form.
"""

from __future__ import annotations


def lamra_clean(s: str | None) -> str:
    """Carriage returns removed, surrounding white space and then double quotes stripped, the first
    character upper-cased, and a period added unless the text ends with ``.``, ``?`` or ``!``."""
    s = (s or "").replace("\r", "").strip().strip('"')
    if s:
        s = s[0].upper() + s[1:]
        if s[-1] not in ".?!":
            s += "."
    return s
