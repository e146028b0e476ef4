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

import json
import os
import stat

import pytest

from cachekeeper import smallfile

PREFIX = '.state.json.'
NOVA_UID = 64061
NOVA_GID = 64062


def mode_and_owner(path):
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_a_new_file_is_0644_and_owned_like_its_directory(tmp_path):
    path = tmp_path / 'state.json'
    smallfile.replace_json(str(path), {'hosts': ['a', 'b']}, PREFIX)
    assert json.loads(path.read_text()) == {'hosts': ['a', 'b']}
    directory = os.stat(tmp_path)
    assert mode_and_owner(path) == (0o644, directory.st_uid,
                                    directory.st_gid)
    assert os.listdir(tmp_path) == ['state.json']


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / 'state.json'
    path.write_text('{}')
    os.chmod(path, 0o600)
    inode = os.stat(path).st_ino
    smallfile.replace_json(str(path), {'n': 1}, PREFIX)
    assert json.loads(path.read_text()) == {'n': 1}
    assert mode_and_owner(path)[0] == 0o600
    # Replaced, not rewritten: a reader holding the old file keeps it whole.
    assert os.stat(path).st_ino != inode


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / 'state.json'
    path.write_text('{"old": true}')
    with pytest.raises(TypeError):
        smallfile.replace_json(str(path), {'not json': object()}, PREFIX)
    assert path.read_text() == '{"old": true}'
    assert os.listdir(tmp_path) == ['state.json']


@pytest.mark.skipif(os.geteuid() != 0, reason='chowns to a nova user')
def test_ownership_follows_the_replaced_file_else_the_directory(tmp_path):
    os.chown(tmp_path, NOVA_UID, NOVA_GID)
    new = tmp_path / 'new.json'
    smallfile.replace_json(str(new), [], PREFIX)
    assert mode_and_owner(new) == (0o644, NOVA_UID, NOVA_GID)

    kept = tmp_path / 'kept.json'
    kept.write_text('[]')
    os.chown(kept, NOVA_UID + 1, NOVA_GID + 1)
    smallfile.replace_json(str(kept), [1], PREFIX)
    assert mode_and_owner(kept)[1:] == (NOVA_UID + 1, NOVA_GID + 1)


def test_read_returns_a_small_regular_file(tmp_path):
    path = tmp_path / 'state.json'
    path.write_bytes(b'{"a": 1}')
    assert smallfile.read(str(path), 8) == b'{"a": 1}'
    with pytest.raises(ValueError, match='larger than 7 bytes'):
        smallfile.read(str(path), 7)
    with pytest.raises(FileNotFoundError):
        smallfile.read(str(tmp_path / 'missing'), 8)


@pytest.mark.parametrize('make', [os.mkfifo, os.mkdir])
def test_read_refuses_what_is_not_a_file_without_waiting(tmp_path, make):
    # Opening a FIFO with no writer for reading would wait for one.
    path = str(tmp_path / 'state.json')
    make(path)
    with pytest.raises(ValueError, match='not a regular file'):
        smallfile.read(path, 8)
