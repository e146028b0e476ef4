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

"""The docs keep up with the code: the manual page of cachekeeper-manage
names every command and option its parser has, and the option reference
shows every namespace the sample config is generated from.

tests/system/test_docs.py builds them.
"""

import argparse
import os
import re
import subprocess
import sys

from cachekeeper.cmd import manage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, 'doc', 'source')
MANAGE_PAGE = os.path.join(SOURCE, 'cli', 'cachekeeper-manage.rst')
GENERATOR_CONF = os.path.join(
    ROOT, 'etc', 'cachekeeper', 'cachekeeper-config-generator.conf')

_PROGRAM = re.compile(r'^\.\. program:: (.+)$')
_OPTION = re.compile(r'^\s*\.\. option:: (.+)$')
_HELP = ('-h', '--help')


def _read(path):
    with open(path) as f:
        return f.read()


def _documented_options():
    """{program: option strings} from the page's program and option
    directives.
    """
    documented = {}
    program = None
    for line in _read(MANAGE_PAGE).splitlines():
        match = _PROGRAM.match(line.strip())
        if match:
            program = match.group(1)
            continue
        match = _OPTION.match(line)
        if match:
            # ".. option:: --log-file PATH, --logfile PATH"
            documented.setdefault(program, set()).update(
                part.split()[0] for part in match.group(1).split(', '))
    return documented


def _commands():
    """[(words, optional option strings, positional metavars)] of every
    command, as argparse has them: (['cache', 'pass'], {...}, [...]).
    """
    parser = argparse.ArgumentParser(prog='cachekeeper-manage')
    manage.add_command_parsers(parser.add_subparsers())

    def subparsers(p):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices
        return None

    def arguments(p):
        options = {s for action in p._actions for s in action.option_strings
                   if s not in _HELP}
        positionals = [action.metavar for action in p._actions
                       if not action.option_strings and
                       not isinstance(action, argparse._SubParsersAction)]
        return options, positionals

    found = []
    for category, category_parser in subparsers(parser).items():
        commands = subparsers(category_parser)
        if commands is None:
            # A category that is itself the command (precache).
            found.append(([category],) + arguments(category_parser))
            continue
        for command, command_parser in commands.items():
            found.append(([category, command],) + arguments(command_parser))
    return found


def test_manage_page_describes_every_command():
    page = _read(MANAGE_PAGE)
    documented = _documented_options()
    commands = _commands()
    assert len(commands) >= 10
    for words, options, positionals in commands:
        name = ' '.join(words)
        # The command's own entry, with its arguments:
        # ``cache explain PATH``.
        entry = re.search(r'^``%s( [^`]*)?``$' % re.escape(name), page, re.M)
        assert entry, 'no entry for %s in %s' % (name, MANAGE_PAGE)
        for positional in positionals:
            assert positional in (entry.group(1) or '').split(), (
                name, positional)
        missing = options - documented.get('cachekeeper-manage ' + name,
                                           set())
        assert not missing, '%s: options %s not described' % (
            name, sorted(missing))


def test_manage_page_describes_every_global_option():
    # The global options are oslo.config's and oslo.log's: as --help
    # lists them.
    manage_script = os.path.join(os.path.dirname(sys.executable),
                                 'cachekeeper-manage')
    result = subprocess.run([manage_script, '--help'], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    usage = result.stdout.split('\n\n', 1)[0]
    options = set(re.findall(r'\[(-[-\w]+)', usage)) - set(_HELP)
    assert '--config-file' in options and '--use-json' in options
    missing = options - _documented_options()['cachekeeper-manage']
    assert not missing, 'global options not described: %s' % sorted(missing)


def test_option_reference_shows_every_generator_namespace():
    # namespace is repeated, which configparser does not keep.
    namespaces = re.findall(r'^namespace\s*=\s*(\S+)\s*$',
                            _read(GENERATOR_CONF), re.M)
    assert 'cachekeeper' in namespaces
    page = _read(os.path.join(SOURCE, 'configuration', 'config.rst'))
    shown = re.findall(r'^\.\. show-options:: (\S+)$', page, re.M)
    assert shown == namespaces, (
        'doc/source/configuration/config.rst shows %s; the generator '
        'config has %s' % (shown, namespaces))
