"""Chat templates that never follow the clock: `strftime_now` pinned to a fixed date while a run uses the
template, and the original template back for what a run folder saves (torch-free)."""

from __future__ import annotations

import re

from dialsum.errors import ConfigError

_STRFTIME_RE = re.compile(r"strftime_now\(\s*(?:\"([^\"]*)\"|'([^']*)')\s*\)")
_PIN_RE = re.compile(r"\{%- macro strftime_now\(format\) -%\}.*?\[format\] \}\}\{%- endmacro -%\}", re.S)


def pin_template_clock(template: str, day) -> str:
    """The template with `strftime_now` answering for the fixed date `day`, so prompts never follow the clock.

    A macro defined in the template shadows transformers' global of the same name; each format the template
    uses is resolved here. A template that computes its format at render time is refused. Pinning a pinned
    template replaces its date (the result is the same as pinning the original once).
    """
    template = unpin_template_clock(template)
    if "strftime_now" not in template:
        return template
    formats = {a or b for a, b in _STRFTIME_RE.findall(template)}
    if template.count("strftime_now") - template.count("strftime_now is defined") != len(
        _STRFTIME_RE.findall(template)
    ):
        raise ConfigError(
            "the chat template calls strftime_now with a computed format; set chat_template to a fixed one"
        )
    table = ", ".join(f"{f!r}: {day.strftime(f)!r}" for f in sorted(formats))
    return "{%- macro strftime_now(format) -%}{{ {" + table + "}[format] }}{%- endmacro -%}" + template


def unpin_template_clock(template: str) -> str:
    """The template as it was before `pin_template_clock` (what a run folder saves)."""
    pinned = _PIN_RE.match(template)
    return template[pinned.end() :] if pinned else template
