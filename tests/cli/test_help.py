"""Every ``--help`` is plain text and every option says what it is for (QA finding)."""

import argparse

from dpverify.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, prog: str = "dpverify"):
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


def test_every_option_has_help_and_no_rst_markup():
    undocumented, markup = [], []
    for prog, parser in _parsers(build_parser()):
        if "``" in (parser.description or ""):
            markup.append(prog)
        for action in parser._actions:
            if action.help is None and action.option_strings:
                undocumented.append(f"{prog} {action.option_strings[-1]}")
    assert not markup, markup
    assert not undocumented, undocumented
