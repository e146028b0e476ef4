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

import pytest

from cachekeeper.scrub import quarantine
from tests.lib import scrubtree


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


class QuarantineTree(scrubtree.ScrubTree):

    def files(self, quarantine_dir=None, host=scrubtree.HOST):
        """A Quarantine beside the test's image cache."""
        return quarantine.Quarantine(
            self.instances_path, self.cache_dir,
            quarantine_dir or self.quarantine_dir, host)


scrub = scrubtree.tree_fixture(QuarantineTree)


def test_host_directory_is_created_private(scrub):
    assert mode(scrub.quarantine_dir) == 0o700
    assert mode(scrub.host_dir()) == 0o700


def test_host_directory_mode_is_repaired(scrub):
    os.chmod(scrub.host_dir(), 0o755)
    scrub.queue.check_quarantine_dir()
    assert mode(scrub.host_dir()) == 0o700


def test_other_file_system_is_refused(scrub, elsewhere):
    if os.stat(elsewhere).st_dev == os.stat(scrub.cache_dir).st_dev:
        pytest.skip('/dev/shm is on the file system of the test directory '
                    'here')
    files = scrub.files(quarantine_dir=os.path.join(elsewhere, 'quarantine'))
    with pytest.raises(quarantine.QuarantineError,
                       match='is not on the file system of the image cache'):
        files.check()
    assert os.listdir(elsewhere) == []


def test_symlinked_host_directory_is_refused(scrub):
    elsewhere = os.path.join(scrub.root, 'elsewhere')
    os.mkdir(elsewhere)
    os.symlink(elsewhere, scrub.host_dir('host-b'))
    with pytest.raises(quarantine.QuarantineError, match='is a symlink'):
        scrub.files(host='host-b').check()


@pytest.mark.parametrize('directory, message', [
    ('instance', 'holds disk'),
    ('', 'is instances_path')])
def test_directory_holding_files_is_refused(scrub, directory, message):
    # An instance directory: a pass does not read the quarantine's.
    instance = os.path.join(scrub.instances_path, 'instance')
    os.mkdir(instance)
    with open(os.path.join(instance, 'disk'), 'w'):
        pass
    quarantine_dir = os.path.join(scrub.instances_path, directory)
    with pytest.raises(quarantine.QuarantineError, match=message):
        scrub.files(quarantine_dir=quarantine_dir).check()
    assert not os.path.exists(os.path.join(quarantine_dir, scrubtree.HOST))


def test_host_that_is_not_a_file_name_is_refused(scrub):
    with pytest.raises(quarantine.QuarantineError, match='host'):
        scrub.files(host='../x').check()


def test_missing_cache_directory_is_checked_against_instances(scrub):
    os.rmdir(scrub.cache_dir)
    scrub.queue.check_quarantine_dir()
