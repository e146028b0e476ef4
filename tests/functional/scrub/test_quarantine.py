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

"""This host's quarantine directory, checked on real directories."""

import os
import stat

import fixtures

from cachekeeper.scrub import quarantine
from tests.functional.scrub import base


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


class QuarantineDirTestCase(base.ScrubTestCase):

    def files(self, quarantine_dir=None, host=base.HOST):
        """A Quarantine beside the test's image cache."""
        return quarantine.Quarantine(
            self.instances_path, self.cache_dir,
            quarantine_dir or self.quarantine_dir, host)

    def test_host_directory_is_created_private(self):
        self.assertEqual(0o700, mode(self.quarantine_dir))
        self.assertEqual(0o700, mode(self.host_dir()))

    def test_host_directory_mode_is_repaired(self):
        os.chmod(self.host_dir(), 0o755)
        self.queue.check_quarantine_dir()
        self.assertEqual(0o700, mode(self.host_dir()))

    def test_other_file_system_is_refused(self):
        other = self.useFixture(fixtures.TempDir(rootdir='/dev/shm')).path
        if os.stat(other).st_dev == os.stat(self.cache_dir).st_dev:
            self.skipTest('/dev/shm is on the file system of the test '
                          'directory here')
        files = self.files(quarantine_dir=os.path.join(other, 'quarantine'))
        with self.assertRaisesRegex(quarantine.QuarantineError,
                                    'is not on the file system of the image '
                                    'cache'):
            files.check()
        self.assertEqual([], os.listdir(other))

    def test_symlinked_host_directory_is_refused(self):
        elsewhere = os.path.join(self.root, 'elsewhere')
        os.mkdir(elsewhere)
        os.symlink(elsewhere, self.host_dir('host-b'))
        with self.assertRaisesRegex(quarantine.QuarantineError,
                                    'is a symlink'):
            self.files(host='host-b').check()

    def test_directory_holding_files_is_refused(self):
        # An instance directory: a pass does not read the quarantine's.
        instance = os.path.join(self.instances_path, 'instance')
        os.mkdir(instance)
        with open(os.path.join(instance, 'disk'), 'w'):
            pass
        for quarantine_dir, message in ((instance, 'holds disk'),
                                        (self.instances_path,
                                         'is instances_path')):
            with self.subTest(quarantine_dir=quarantine_dir):
                with self.assertRaisesRegex(quarantine.QuarantineError,
                                            message):
                    self.files(quarantine_dir=quarantine_dir).check()
                self.assertFalse(os.path.exists(
                    os.path.join(quarantine_dir, base.HOST)))

    def test_host_that_is_not_a_file_name_is_refused(self):
        with self.assertRaisesRegex(quarantine.QuarantineError, 'host'):
            self.files(host='../x').check()

    def test_missing_cache_directory_is_checked_against_instances(self):
        os.rmdir(self.cache_dir)
        self.queue.check_quarantine_dir()
