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

"""Parse and validate the configuration; every problem is one clear line."""

import importlib.metadata
import os
import urllib.parse

from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg
from oslo_log import log as logging

import cachekeeper.conf
from cachekeeper import masking
from cachekeeper import version

CONF = cachekeeper.conf.CONF
LOG = logging.getLogger(__name__)

# The exit status for bad configuration and bad usage (argparse uses it too).
EXIT_CONFIG = 2

# The config files read when the command line names none, those that
# exist, in the order the systemd unit passes them: nova.conf first, so
# that instances_path and host are nova's; cachekeeper.conf last, so that
# its own options win.
DEFAULT_CONFIG_FILES = ('/etc/nova/nova.conf',
                        '/etc/cachekeeper/cachekeeper.conf')
CONFIG_FILES_HELP = (
    'Without --config-file or --config-dir, %s are read, those that exist, '
    'as the systemd unit passes them.' % ' and then '.join(
        DEFAULT_CONFIG_FILES))


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` are one line each."""

    def __init__(self, problems):
        super().__init__('\n'.join(problems))
        self.problems = problems


def parse_args(argv, conf=CONF, default_config_files=None, check=True):
    """Parse the command line and the config files, then validate them.

    ``default_config_files`` are read when ``argv`` names no config file
    or directory: by default the DEFAULT_CONFIG_FILES that exist. Raises
    ConfigError naming every problem found; with ``check`` False, only
    problems that stop parsing.
    """
    logging.register_options(conf)
    if default_config_files is None:
        default_config_files = _default_config_files(argv[1:])
    try:
        conf(argv[1:],
             project='cachekeeper',
             version=version.version_string(),
             default_config_files=default_config_files,
             epilog=CONFIG_FILES_HELP)
    except cfg.ConfigFilesNotFoundError as e:
        raise ConfigError(['cannot read config file %s: not found or '
                           'not readable' % ', '.join(e.config_files)])
    except cfg.ConfigFilesPermissionDeniedError as e:
        raise ConfigError(['cannot read config file %s: permission denied'
                           % ', '.join(e.config_files)])
    except cfg.ConfigDirNotFoundError as e:
        raise ConfigError(['config directory %s not found' % e.config_dir])
    except cfg.ConfigFileParseError as e:
        # oslo.config's errors may quote a line or a value of the files,
        # which may hold a secret.
        raise ConfigError(['cannot parse config file %s: %s'
                           % (e.config_file, masking.mask(e.msg))])
    except cfg.Error as e:
        raise ConfigError([masking.mask(str(e).replace('\n', ' '))])
    except OSError as e:
        raise ConfigError(['cannot read config file %s: %s'
                           % (e.filename, e.strerror)])
    problems = validate(conf) if check else []
    if problems:
        raise ConfigError(problems)


def _default_config_files(args):
    """The DEFAULT_CONFIG_FILES that exist, or none if ``args`` name a
    config file or directory.

    oslo.config itself reads its default files unless --config-file is
    given, but a --config-dir given alone names the whole configuration
    too. Both are recognised as oslo.config recognises them.
    """
    if any(arg.split('=', 1)[0] in ('--config-file', '--config-dir')
           for arg in args):
        return []
    return [path for path in DEFAULT_CONFIG_FILES if os.path.exists(path)]


def validate(conf):
    """Return a list of problems with the configuration, one line each."""
    problems = _invalid_values(conf)
    if problems:
        # The cross-option checks below read values, which would fail again.
        return problems
    return _cross_option_problems(conf)


def _invalid_values(conf):
    """Read every option once: oslo.config checks file values lazily."""
    return _read_all(conf)[1]


def _read_all(conf):
    """Read every option; return ({(group, name): value}, problems).

    ``group`` is None for the DEFAULT group, as in oslo.config's mutate
    hooks; an option whose value is invalid has no value.
    """
    values = {}
    problems = []

    def read(namespace, group, name):
        try:
            value = namespace[name]
        except (cfg.ConfigFileValueError, ValueError,
                cfg.NoSuchOptError) as e:
            # NoSuchOptError: a $name in the value that is no option.
            problems.append(_option_problem(group or 'DEFAULT', name,
                                            _reason(e)))
            return None
        if not isinstance(value, cfg.ConfigOpts.GroupAttr):
            values[(group, name)] = value
        return value

    for key in sorted(conf):
        value = read(conf, None, key)
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            for name in sorted(value):
                read(value, key, name)
    return values, problems


class ReloadGuard:
    """A mutate hook that keeps the running values when a reload is bad.

    oslo.config applies reloaded files before any hook can check them, and
    an invalid value then fails wherever it is read: in the daemon's loop,
    in oslo.service's reload. When the reloaded configuration has problems,
    the options that the reload changed get their running values back (as
    overrides, until a reload without problems), and each problem is one
    log line.
    """

    def __init__(self, conf):
        self._conf = conf
        self._values = _read_all(conf)[0]
        self._kept = set()

    def __call__(self, conf, fresh):
        for group, name in self._kept:
            conf.clear_override(name, group)
        changed = self._kept | set(fresh)
        self._kept = set()
        problems = validate(conf)
        if not problems:
            self._values = _read_all(conf)[0]
            return
        for group, name in sorted(changed, key=str):
            if (group, name) in self._values:
                conf.set_override(name, self._values[(group, name)], group)
                self._kept.add((group, name))
        for problem in problems:
            LOG.error('Configuration not reloaded, the running values stay: '
                      '%s', problem)


def _reason(error):
    # oslo.config says where the value came from, then why it is bad.
    message = str(error).replace('\n', ' ')
    return message.split(' is not valid: ', 1)[-1]


def _option_problem(group, name, reason):
    return '[%s] %s: %s' % (group, name, reason)


def _cross_option_problems(conf):
    ic = conf.image_cache
    problems = []

    def problem(group, name, reason):
        problems.append(_option_problem(group, name, reason))

    if not os.path.isabs(conf.instances_path):
        problem('DEFAULT', 'instances_path', 'must be an absolute path')
    name = ic.subdirectory_name
    if (not name or name in ('.', '..') or os.sep in name or
            '\0' in name or name == 'locks'):
        problem('image_cache', 'subdirectory_name',
                'must be a single path component below instances_path, '
                'got %r' % name)
    if ic.disk_low_watermark_percent >= ic.disk_high_watermark_percent:
        problem('image_cache', 'disk_low_watermark_percent',
                'must be lower than [image_cache] '
                'disk_high_watermark_percent (%d >= %d)' % (
                    ic.disk_low_watermark_percent,
                    ic.disk_high_watermark_percent))
    if any(not image_id.strip() for image_id in ic.pinned_images):
        problem('image_cache', 'pinned_images', 'contains an empty image id')
    if not conf.host:
        problem('DEFAULT', 'host', 'must not be empty')
    # A relative instances_path makes the default quarantine_dir relative
    # too; one line about the cause is enough.
    if (os.path.isabs(conf.instances_path) and
            not os.path.isabs(conf.scrubber.quarantine_dir)):
        problem('scrubber', 'quarantine_dir', 'must be an absolute path')
    backend_problem = _backend_url_problem(conf.coordination.backend_url)
    if backend_problem:
        problem('coordination', 'backend_url', backend_problem)
    problems.extend(_glance_problems(conf))
    state_problem = _state_path_problem(conf.state_path)
    if state_problem:
        problem('DEFAULT', 'state_path', state_problem)
    metrics_problem = _metrics_file_problem(conf.metrics_file)
    if metrics_problem:
        problem('DEFAULT', 'metrics_file', metrics_problem)
    return problems


def _metrics_file_problem(path):
    if not path:
        return None
    if not os.path.isabs(path):
        return 'must be an absolute path'
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        return 'directory %s does not exist' % directory
    if not os.access(directory, os.W_OK | os.X_OK):
        # The file is replaced by renaming a new one into its directory.
        return 'directory %s is %s' % (directory, _unwritable(directory))
    if os.path.isdir(path):
        return '%s is a directory' % path
    return None


def _backend_url_problem(url):
    scheme = urllib.parse.urlsplit(url).scheme
    if '://' not in url or not scheme:
        # Not echoed: what is not a URL cannot be masked as one, and may
        # still hold a password.
        return 'must be a tooz URL such as redis://127.0.0.1:6379'
    # Read from the package metadata: importing tooz's drivers here would
    # load eventlet before the daemon chose its backend.
    known = sorted(entry_point.name for entry_point in
                   importlib.metadata.entry_points(group='tooz.backends'))
    if scheme not in known:
        return 'tooz has no backend %r (it has %s)' % (scheme,
                                                       ', '.join(known))
    return None


def _glance_problems(conf):
    """What would keep a Glance client from being built."""
    opts = conf.glance
    if opts.auth_type == 'none' and not opts.endpoint_override:
        return [_option_problem('glance', 'endpoint_override',
                                'required with auth_type none')]
    try:
        ks_loading.load_auth_from_conf_options(conf, 'glance')
    except ks_exceptions.NoMatchingPlugin:
        return [_option_problem('glance', 'auth_type',
                                'no such auth plugin: %s' % opts.auth_type)]
    except ks_exceptions.MissingRequiredOptions as e:
        return [_option_problem('glance', option.dest,
                                'required by auth_type %s' % opts.auth_type)
                for option in e.options]
    return []


def _state_path_problem(path):
    if not os.path.isabs(path):
        return 'must be an absolute path'
    if not os.path.isdir(path):
        return '%s does not exist or is not a directory' % path
    if not os.access(path, os.W_OK | os.X_OK):
        return '%s is %s' % (path, _unwritable(path))
    return None


def _unwritable(directory):
    """Say why this user cannot write in ``directory``, which exists."""
    # systemd's ProtectSystem=strict mounts everything outside the unit's
    # ReadWritePaths= read-only, where no owner or mode would help.
    if os.statvfs(directory).f_flag & os.ST_RDONLY:
        return 'on a read-only file system (systemd ProtectSystem?)'
    return 'not writable by this user'
