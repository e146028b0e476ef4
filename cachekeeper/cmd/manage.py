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

"""cachekeeper-manage: ask the cache what it did and why, or act on it.

Commands are grouped in categories (``cachekeeper-manage cache pass``).
A category is a class; each public method is one command, its arguments
declared with @args. Exit status: 0 done, 1 done with errors, 2 bad
configuration or usage.
"""

import inspect
import sys

from oslo_config import cfg
from oslo_log import log as logging

from cachekeeper import config
from cachekeeper import demo

CONF = config.CONF


def args(*args, **kwargs):
    """Declare one argparse argument of a command."""
    def decorate(func):
        func.__dict__.setdefault('args', []).insert(0, (args, kwargs))
        return func
    return decorate


class ConfigCommands:
    """Check configuration files."""

    def check(self):
        """Validate the configuration; print every problem."""
        # parse_args has already validated it: reaching this point means
        # there was nothing to report.
        print('Configuration is valid.')
        return 0


class DemoCommands:
    """Build a demo compute host to try the daemon on."""

    # It makes the configuration it will be run with.
    uses_configuration = False

    @args('path', metavar='DIR',
          help='Where to build it: a new or empty directory, or an earlier '
               'demo to rebuild.')
    def create(self, path):
        """Build a small compute host tree and a config file for it."""
        try:
            summary = demo.create(path)
        except demo.NotADemoDirectory as e:
            print('cachekeeper-manage: %s' % e, file=sys.stderr)
            return config.EXIT_CONFIG
        except demo.DemoError as e:
            print('cachekeeper-manage: %s' % e, file=sys.stderr)
            return 1
        print('\n'.join(demo.describe(summary)))
        return 0


CATEGORIES = {
    'config': ConfigCommands,
    'demo': DemoCommands,
}


def _commands(category):
    for name, method in inspect.getmembers(category, inspect.isfunction):
        if not name.startswith('_'):
            yield name, method


def add_command_parsers(subparsers):
    for category_name, category in CATEGORIES.items():
        parser = subparsers.add_parser(category_name, help=category.__doc__)
        commands = parser.add_subparsers(dest='action', metavar='COMMAND')
        commands.required = True
        for name, method in _commands(category):
            command = commands.add_parser(
                name.replace('_', '-'), help=method.__doc__)
            command.set_defaults(action_fn=method, command_class=category)
            for arg_args, arg_kwargs in getattr(method, 'args', []):
                command.add_argument(*arg_args, **arg_kwargs)


category_opt = cfg.SubCommandOpt('category',
                                 title='Command categories',
                                 handler=add_command_parsers)


def _action_kwargs(method):
    parameters = list(inspect.signature(method).parameters)[1:]
    return {name: getattr(CONF.category, name) for name in parameters}


def main():
    CONF.register_cli_opt(category_opt)
    try:
        config.parse_args(sys.argv, check=False)
        # A category that makes its own configuration (demo) sets
        # uses_configuration = False: the defaults need not be usable yet.
        command_class = CONF.category.command_class
        problems = (config.validate(CONF)
                    if getattr(command_class, 'uses_configuration', True)
                    else [])
        if problems:
            raise config.ConfigError(problems)
    except config.ConfigError as e:
        for problem in e.problems:
            print('cachekeeper-manage: %s' % problem, file=sys.stderr)
        return config.EXIT_CONFIG
    logging.set_defaults(default_log_levels=(
        logging.get_default_log_levels() + ['cachekeeper=WARNING']))
    logging.setup(CONF, 'cachekeeper-manage')
    method = CONF.category.action_fn
    return method(CONF.category.command_class(), **_action_kwargs(method)) or 0
