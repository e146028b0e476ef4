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

"""scrub restore of a drained entry: the original downloaded again from a
real glance-api, or one line saying why it cannot be.
"""

import json
import os

from cachekeeper.state import db
from cachekeeper.state import ledger
from tests.lib import glance

MiB = 1024 * 1024
HOUR = 3600
# Glance is never asked: the port is only written into the config.
NO_GLANCE_URL = 'http://127.0.0.1:9'
# The session's glance-api holds the images other tests pinned by property,
# which a pass would download into the cache these tests look at.
NO_PIN_PROPERTY = {'glance__pin_property': ''}


def _evicted_and_drained(host, path):
    """Have a pass remove ``path``, drain it; return its entry's ID.

    Under a budget that ``path`` alone is over: an original younger than
    its minimum age is evicted, and deleted in that pass.
    """
    glance.set_age(path, 2 * HOUR)
    host.write_config(image_cache__max_cache_size_mb=1)
    done = host.manage('cache', 'pass')
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(path)
    assert host.manage('scrub', 'drain').returncode == 0
    listed = host.manage('scrub', 'list', '--all', '--json')
    [entry] = json.loads(listed.stdout)['entries']
    assert entry['state'] == 'drained'
    return entry['id']


def _cache_file(host, name, data):
    path = os.path.join(host.cache_dir, name)
    with open(path, 'wb') as f:
        f.write(data)
    return path


def _assert_one_line(failed, expected):
    assert failed.returncode == 1, failed.stdout
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert expected in lines[0]


def test_a_drained_original_is_downloaded_again_from_glance(glance_api,
                                                            tmp_path):
    data = os.urandom(3 * MiB + 4321)
    image_id = glance.upload(glance_api.client(), data)
    host = glance.Host(tmp_path, glance_api.url, **NO_PIN_PROPERTY)
    assert host.manage('precache', image_id).returncode == 0
    entry_id = _evicted_and_drained(host, host.path(image_id))

    restored = host.manage('scrub', 'restore', str(entry_id))

    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.startswith(
        'Restored entry %d from Glance: Cached image %s as %s'
        % (entry_id, image_id, host.path(image_id)))
    assert 'sha512 verified' in restored.stdout
    assert glance.read(host.path(image_id)) == data
    assert host.listing() == [glance.cache_name(image_id)]


def test_the_image_id_the_ledger_kept_is_tried_first(glance_api, tmp_path):
    # A hidden image (os_hidden) is not in Glance's listings, but can be
    # downloaded by its id: only the id nova's metadata named finds it.
    data = os.urandom(2 * MiB)
    image_id = glance.upload(glance_api.client(), data, os_hidden=True)
    host = glance.Host(tmp_path, glance_api.url, **NO_PIN_PROPERTY)
    assert host.manage('precache', image_id).returncode == 0
    entry_id = _evicted_and_drained(host, host.path(image_id))
    state_db = db.open_state(host.state_path)
    try:
        ledger.record_images(state_db, {glance.cache_name(image_id): image_id})
    finally:
        state_db.close()

    restored = host.manage('scrub', 'restore', str(entry_id))

    assert restored.returncode == 0, restored.stderr
    assert glance.read(host.path(image_id)) == data


def test_an_original_glance_does_not_list_cannot_be(glance_api, tmp_path):
    host = glance.Host(tmp_path, glance_api.url, **NO_PIN_PROPERTY)
    name = glance.cache_name('an-image-glance-never-had')
    entry_id = _evicted_and_drained(
        host, _cache_file(host, name, os.urandom(2 * MiB)))

    failed = host.manage('scrub', 'restore', str(entry_id))

    _assert_one_line(failed, 'entry %d was drained: %s is deleted, and it '
                             'cannot be downloaded again: its image id is '
                             'unknown' % (entry_id,
                                          os.path.join(host.cache_dir, name)))
    assert host.listing() == []


def test_without_glance_it_cannot_be(tmp_path):
    host = glance.Host(tmp_path, NO_GLANCE_URL, glance__auth_type='',
                       glance__endpoint_override='')
    entry_id = _evicted_and_drained(host, _cache_file(
        host, glance.cache_name('an-image'), os.urandom(2 * MiB)))

    failed = host.manage('scrub', 'restore', str(entry_id))

    _assert_one_line(failed, 'it cannot be downloaded again: Glance is not '
                             'configured')


def test_only_an_original_can_be(tmp_path):
    host = glance.Host(tmp_path, NO_GLANCE_URL)
    resized = glance.cache_name('an-image') + '_10737418240'
    entry_id = _evicted_and_drained(
        host, _cache_file(host, resized, os.urandom(2 * MiB)))

    failed = host.manage('scrub', 'restore', str(entry_id))

    _assert_one_line(failed, 'only an original image can be downloaded '
                             'again; nova makes resized files itself')
