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

"""etc/systemd/cachekeeper.service, parsed."""

import collections
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
UNIT_PATH = os.path.join(REPO_ROOT, 'etc', 'systemd', 'cachekeeper.service')


def parse_unit(text):
    """Return {section: {key: [values]}}: keys may repeat in a unit file."""
    sections = collections.defaultdict(lambda: collections.defaultdict(list))
    section = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(('#', ';')):
            continue
        if line.startswith('[') and line.endswith(']'):
            section = line[1:-1]
            continue
        if section is None or '=' not in line or line.endswith('\\'):
            raise ValueError('line %d not understood: %r' % (number, raw))
        key, value = line.split('=', 1)
        sections[section][key.strip()].append(value.strip())
    return sections


class UnitFile:
    """The unit file, parsed."""

    def __init__(self, path=UNIT_PATH):
        with open(path) as f:
            self.sections = parse_unit(f.read())

    def one(self, section, key):
        values = self.sections[section][key]
        assert len(values) == 1, ('%s= set %d times in [%s]'
                                  % (key, len(values), section))
        return values[0]

    def words(self, section, key):
        return [word for value in self.sections[section][key]
                for word in value.split()]

    def writable_paths(self):
        """The directories the service may write in: [(path, optional)].

        ``ReadWritePaths=`` entries (a "-" prefix makes one optional), and
        the state and logs directories systemd makes for the service.
        """
        paths = [(entry.lstrip('-'), entry.startswith('-'))
                 for entry in self.words('Service', 'ReadWritePaths')]
        for key, parent in (('StateDirectory', '/var/lib'),
                            ('LogsDirectory', '/var/log')):
            paths.extend((os.path.join(parent, name), False)
                         for name in self.words('Service', key))
        return paths
