"""
Tests for L{lbproxy.config.docs}: README.rst's option list is the table's.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.config.docs import BEGIN, END, options_rst, rewrite_readme, rst_text
from lbproxy.config.model import all_options

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.rst")


class ReadmeTests(SynchronousTestCase):
    """
    The option list in README.rst is written from the option table.
    """

    def test_readme_matches_table(self) -> None:
        """
        README.rst holds exactly L{options_rst} between its markers; run
        C{python -m lbproxy.config.docs README.rst} after changing an
        option.
        """
        with open(README, encoding="utf-8") as f:
            text = f.read()
        self.assertTrue(BEGIN in text, f"README.rst has no {BEGIN} line")
        self.assertTrue(
            rewrite_readme(text) == text,
            "README.rst's option list differs from the table: "
            "run python -m lbproxy.config.docs README.rst",
        )

    def test_every_option_listed(self) -> None:
        """
        The list names every command-line option of the table.
        """
        text = options_rst()
        for each in all_options():
            if each.spec.command_line:
                self.assertIn(each.name, text)

    def test_markers_required(self) -> None:
        """
        A README without the markers cannot be rewritten.
        """
        self.assertRaises(ValueError, rewrite_readme, "no markers here\n" + END)

    def test_help_markup_escaped(self) -> None:
        """
        A help's C{*}, C{`} and C{|} are escaped in the list, so
        C{*.example.com.pem} is text, not the start of an emphasis that
        docutils warns about.
        """
        self.assertEqual(rst_text("a *.b `c` |d| e\\f"), "a \\*.b \\`c\\` \\|d\\| e\\\\f")
        self.assertIn("\\*.example.com.pem", options_rst())
