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

"""What nova's own configuration says, read from nova.conf as nova reads it.

nova's ``[image_cache] manager_interval`` has the same group and name as
cachekeeper's, so oslo.config cannot tell the two apart once both files are
parsed: the files that look like nova's are read here, each on its own.
"""

import configparser
import glob
import os

# nova's [image_cache] manager_interval when nova.conf does not set it.
NOVA_DEFAULT_MANAGER_INTERVAL = 2400


def config_files(conf):
    """The config files oslo.config read, in order (directories sorted)."""
    files = list(conf.config_file or ())
    for directory in conf.config_dir or ():
        files.extend(sorted(glob.glob(os.path.join(directory, '*.conf'))))
    return files


def manager_interval(paths):
    """Find nova's own ``[image_cache] manager_interval`` in ``paths``.

    nova's option has the same group and name as cachekeeper's, so when
    nova.conf is passed before cachekeeper.conf, oslo.config gives
    cachekeeper's value. Each file of ``paths`` that looks like nova's
    (named ``nova*.conf``, or setting ``[DEFAULT] compute_driver``) is read
    on its own; the last one that sets the option wins, as in nova. Returns
    None when no file looks like nova's, else a dict: the nova config
    files, the interval (nova's default when none sets it), the file it
    comes from (None for the default) and ``error`` for a file that cannot
    be read or a value that is not a number.
    """
    found = None
    for path in paths:
        parser = configparser.ConfigParser(interpolation=None, strict=False,
                                           allow_no_value=True)
        try:
            with open(path) as f:
                parser.read_file(f)
        except (OSError, configparser.Error) as e:
            if _named_like_nova(path):
                found = found or _nova_document()
                found['config_files'].append(path)
                found['error'] = 'cannot read %s: %s' % (path, e)
            continue
        if not (_named_like_nova(path) or
                parser.has_option('DEFAULT', 'compute_driver')):
            continue
        found = found or _nova_document()
        found['config_files'].append(path)
        value = _interval_setting(parser)
        if value is None:
            continue
        try:
            found['manager_interval'] = int(value)
        except ValueError:
            found['error'] = ('%s: [image_cache] manager_interval is not a '
                              'number: %r' % (path, value))
            continue
        found['source'] = path
    return found


def _nova_document():
    return {'config_files': [], 'manager_interval':
            NOVA_DEFAULT_MANAGER_INTERVAL, 'source': None, 'error': None}


def _named_like_nova(path):
    name = os.path.basename(path)
    return name.startswith('nova') and name.endswith('.conf')


def _interval_setting(parser):
    if parser.has_option('image_cache', 'manager_interval'):
        return parser.get('image_cache', 'manager_interval')
    # nova's deprecated name for it.
    if parser.has_option('DEFAULT', 'image_cache_manager_interval'):
        return parser.get('DEFAULT', 'image_cache_manager_interval')
    return None
