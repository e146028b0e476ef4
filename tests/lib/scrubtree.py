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

"""A compute host tree with real files and a real scrub queue.

ScrubTree is instances/_base with files, a state directory and host-a's
scrub queue; close() closes the queues it opened and undoes chattr +i.
"""

import hashlib
import os
import shutil
import subprocess

import pytest

from cachekeeper.cache import locks
from cachekeeper.cache import scan
from cachekeeper.scrub import queue
from cachekeeper.state import db

HOST = 'host-a'
NOW = 1800000000.0
# Cache files are older than any minimum age.
OLD_MTIME_NS = 1700000000123456789


def image_name(number):
    return hashlib.sha1(b'image-%d' % number).hexdigest()


class ScrubTree:
    """instances/_base with files, a state directory and host-a's queue."""

    def __init__(self, root):
        self.root = str(root)
        self._queues = []
        self._immutable = []
        self.instances_path = os.path.join(self.root, 'instances')
        self.cache_dir = os.path.join(self.instances_path, '_base')
        self.quarantine_dir = os.path.join(self.instances_path,
                                           '.cachekeeper-quarantine')
        self.state_path = os.path.join(self.root, 'state')
        self.config_file = os.path.join(self.root, 'cachekeeper.conf')
        os.makedirs(self.cache_dir)
        os.mkdir(self.state_path, 0o700)
        self.queue = self.make_queue()

    def close(self):
        for path in reversed(self._immutable):
            self.make_mutable(path)
        for scrub_queue in reversed(self._queues):
            scrub_queue.close()

    def make_queue(self, host=HOST, state_path=None):
        scrub_queue = queue.ScrubQueue(
            db.open_state(state_path or self.state_path),
            self.instances_path, self.cache_dir, self.quarantine_dir, host)
        self._queues.append(scrub_queue)
        scrub_queue.check_quarantine_dir()
        return scrub_queue

    def write_config(self, **scrubber):
        """Write config_file for cachekeeper-manage on this tree."""
        with open(self.config_file, 'w') as f:
            f.write('[DEFAULT]\ninstances_path = %s\nstate_path = %s\n'
                    'host = %s\n' % (self.instances_path, self.state_path,
                                     HOST))
            f.write('[scrubber]\n')
            for name, value in scrubber.items():
                f.write('%s = %s\n' % (name, value))

    def host_dir(self, host=HOST):
        return os.path.join(self.quarantine_dir, host)

    def make_file(self, name, content=None, mtime_ns=OLD_MTIME_NS):
        """Create a cache file; return its BaseFile as a scan sees it."""
        path = os.path.join(self.cache_dir, name)
        with open(path, 'wb') as f:
            f.write(content if content is not None else name.encode() * 100)
        os.utime(path, ns=(mtime_ns, mtime_ns))
        return scan.base_file(path, os.lstat(path))

    def quarantine(self, base_file, now=NOW, scrub_queue=None):
        """Quarantine as a pass does: under nova's lock."""
        with locks.nova_lock(self.instances_path, base_file.name):
            return (scrub_queue or self.queue).quarantine(
                base_file, 'unused for 10d', now)

    def quarantined_names(self, host=HOST):
        return sorted(os.listdir(self.host_dir(host)))

    def cache_names(self):
        return sorted(os.listdir(self.cache_dir))

    def set_entry(self, entry_id, **columns):
        """Change an entry behind the queue's back (a tampered database)."""
        with self.queue.state_db.transaction() as connection:
            for column, value in columns.items():
                connection.execute(
                    'UPDATE scrub_entry SET %s = ? WHERE id = ?' % column,
                    (value, entry_id))

    def make_immutable(self, path):
        """chattr +i: not even root may delete or rename it, or in it."""
        if os.geteuid() != 0:
            pytest.skip('making a file undeletable needs root (chattr +i)')
        chattr = shutil.which('chattr')
        if chattr is None:
            pytest.skip('chattr is not installed')
        result = subprocess.run([chattr, '+i', path], capture_output=True,
                                text=True)
        if result.returncode:
            pytest.skip('chattr +i is not supported here: %s'
                        % result.stderr.strip())
        self._immutable.append(path)

    def make_mutable(self, path):
        if os.path.exists(path):
            subprocess.run([shutil.which('chattr'), '-i', path], check=True)


def tree_fixture(tree_class=ScrubTree, name='scrub'):
    """A pytest fixture ``name``: a ``tree_class`` in tmp_path, closed after.

    A module whose tests need more of the tree than ScrubTree says
    ``scrub = scrubtree.tree_fixture(ItsTree)``.
    """
    @pytest.fixture(name=name)
    def tree(tmp_path):
        made = tree_class(tmp_path)
        yield made
        made.close()
    return tree
