"""Every relative link in the README and in docs/ leads to a file, and to a heading of it where it names one."""

import os
import re

import pytest

from tests.conftest import ROOT

PAGES = ['README.md', *(f'docs/{name}' for name in sorted(os.listdir(os.path.join(ROOT, 'docs'))) if '.md' in name)]


def prose(path):
    """A Markdown page without its fenced code blocks, which hold neither links nor headings."""
    with open(path, encoding='utf-8') as f:
        return re.sub(r'```.*?```', '', f.read(), flags=re.S)


def anchors(path):
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r'^#+ (.*)$', prose(path), flags=re.M)
    return {re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-') for heading in headings}


@pytest.mark.parametrize('page', PAGES)
def test_relative_links_resolve(page):
    text = prose(os.path.join(ROOT, page))
    links = re.findall(r'\]\(([^)\s]+)\)', text)
    assert links or page != 'README.md'
    for link in links:
        if re.match(r'[a-z]+:', link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition('#')
        path = (
            os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target)) if target else os.path.join(ROOT, page)
        )
        assert os.path.exists(path), f'{page}: {link} points to a missing file'
        if anchor:
            assert anchor in anchors(path), f'{page}: {link} points to a missing heading'
