# -*- test-case-name: tests.config.test_docs -*-
"""
The README's option list, written from the option table.

README.rst holds the output of L{options_rst} between the lines
C{.. options-begin} and C{.. options-end}; a test fails when they differ,
and C{python -m lbproxy.config.docs README.rst} rewrites that part.
"""

from __future__ import annotations

import sys
import textwrap

from lbproxy.config.commandline import flag_name
from lbproxy.config.model import all_options
from lbproxy.config.options import FLAG, Option, Reload, Scope

__all__ = ["BEGIN", "END", "options_rst", "rewrite_readme", "rst_text"]

BEGIN = ".. options-begin"
END = ".. options-end"


def rst_text(text: str) -> str:
    """
    C{text} as literal reStructuredText prose: the characters that start
    inline markup (C{*}, C{`}, C{|}) and the backslash are escaped, so a
    help such as C{*.example.com.pem} is not read as emphasis.
    """
    for char in ("\\", "*", "`", "|"):
        text = text.replace(char, "\\" + char)
    return text


def _entry(option: Option) -> str:
    if option.kind is FLAG:
        term = f"``--{flag_name(option)}``"
        default = f"default: {'on' if option.default else 'off'}"
    else:
        term = f"``--{option.name} {option.kind.metavar}``"
        default = f"default: ``{option.kind.show(option.default)}``"
    notes = [rst_text(option.help)]
    if not option.spec.file:
        notes.append("Command line only.")
    if option.reload is Reload.RESTART:
        notes.append("A reload does not change it: restart.")
    if option.spec.repeatable:
        notes.append("Repeatable.")
    body = textwrap.fill(
        " ".join(notes),
        76,
        initial_indent="    ",
        subsequent_indent="    ",
        break_on_hyphens=False,
        break_long_words=False,
    )
    return f"{term} ({default})\n{body}"


def options_rst() -> str:
    """
    The option list as reStructuredText: every option of the table with
    its help, default, file key and reload behaviour.
    """
    parts = []
    titles = (
        (Scope.GLOBAL, "Global options"),
        (
            Scope.POOL,
            "Pool options (in a file: per ``[upstream.NAME]``, or at the top level for every pool)",
        ),
    )
    for scope, title in titles:
        entries = [_entry(o) for o in all_options() if o.scope is scope and o.spec.command_line]
        parts.append(f"**{title}**\n\n" + "\n".join(entries))
    return "\n\n".join(parts) + "\n"


def rewrite_readme(text: str) -> str:
    """
    C{text} (a README) with its option list replaced by L{options_rst}.

    @raise ValueError: if the markers are missing.
    """
    head, begin, rest = text.partition(BEGIN + "\n")
    _, end, tail = rest.partition(END + "\n")
    if not begin or not end:
        raise ValueError(f"README has no {BEGIN} ... {END} section")
    return head + begin + "\n" + options_rst() + "\n" + end + tail


if __name__ == "__main__":
    path = sys.argv[1]
    with open(path, encoding="utf-8") as f:
        old = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(rewrite_readme(old))
