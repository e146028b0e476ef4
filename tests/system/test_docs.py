# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""The docs and the release notes build without a warning, as tox's docs
and releasenotes environments build them (sphinx-build -W).
"""

import html as html_module
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _sphinx_build(builder, source, output, cwd):
    result = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-b', builder,
         '-d', os.path.join(output, '.doctrees'), source,
         os.path.join(output, builder)],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300)
    assert result.returncode == 0, result.stdout[-6000:]
    return os.path.join(output, builder)


def _git(*args, cwd):
    subprocess.run(['git', '-c', 'user.name=test', '-c',
                    'user.email=test@example.com'] + list(args),
                   cwd=cwd, check=True, capture_output=True, timeout=120)


@pytest.mark.timeout(600)
def test_docs_build_html_and_man_pages(tmp_path):
    output = str(tmp_path)
    source = os.path.join(ROOT, 'doc', 'source')
    man = _sphinx_build('man', source, output, cwd=ROOT)
    for page in ('cachekeeper-manage.1', 'cachekeeper.8'):
        with open(os.path.join(man, page)) as f:
            text = f.read()
        assert text.startswith('.\\" Man page generated from reStructuredText')
    with open(os.path.join(man, 'cachekeeper-manage.1')) as f:
        assert 'scrub restore ID' in f.read()

    html = _sphinx_build('html', source, output, cwd=ROOT)
    with open(os.path.join(html, 'configuration', 'config.html')) as f:
        reference = f.read()
    # oslo_config.sphinxext: one anchor per option, group.name.
    assert 'id="coordination.backend_url"' in reference
    assert 'id="DEFAULT.use_json"' in reference
    # oslo_config.sphinxconfiggen: the sample, generated for the build.
    with open(os.path.join(html, 'configuration',
                           'sample-config.html')) as f:
        assert 'backend_url' in f.read()
    for page in ('admin/logging.html', 'cli/cachekeeper-manage.html'):
        assert os.path.isfile(os.path.join(html, page)), page


@pytest.mark.timeout(600)
def test_release_notes_build(tmp_path):
    # reno reads the notes from the git history: in a clone, with the notes
    # of this checkout committed as they are now.
    clone = str(tmp_path / 'clone')
    _git('clone', '--quiet', ROOT, clone, cwd=str(tmp_path))
    notes = os.path.join(clone, 'releasenotes')
    shutil.rmtree(notes, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, 'releasenotes'), notes,
                    ignore=shutil.ignore_patterns('build'))
    _git('add', '--all', 'releasenotes', cwd=clone)
    _git('commit', '--quiet', '--allow-empty', '-m', 'notes', cwd=clone)
    names = os.listdir(os.path.join(notes, 'notes'))
    assert names
    html = _sphinx_build('html', os.path.join(notes, 'source'),
                         str(tmp_path / 'out'), cwd=clone)
    with open(os.path.join(html, 'unreleased.html')) as f:
        page = _words(html_module.unescape(re.sub(r'<[^>]+>', '', f.read())))
    # Every item of every note is in the page: its first words, as text.
    for name in names:
        with open(os.path.join(notes, 'notes', name)) as f:
            note = yaml.safe_load(f)
        for section, items in note.items():
            for item in [items] if isinstance(items, str) else items:
                start = ' '.join(_words(item.replace('``', '')).split()[:6])
                assert start in page, (name, section, start)


def _words(text):
    # Sphinx makes quotes typographic.
    text = text.replace('\u2019', "'").replace('\u201c', '"')
    return ' '.join(text.replace('\u201d', '"').split())
