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

"""cache pin and cache list against a real glance-api: a pinned image that
is missing is downloaded, and the list names images as Glance does.
"""

import json
import os
import uuid

from tests.lib import glance

MiB = 1024 * 1024
# The session's glance-api holds the images other tests pinned by property,
# which a pass would download into the cache these tests look at.
NO_PIN_PROPERTY = {'glance__pin_property': ''}


def test_a_pin_of_a_missing_image_makes_a_pass_download_it(glance_api,
                                                           tmp_path):
    data = os.urandom(2 * MiB + 123)
    image_id = glance.upload(glance_api.client(), data)
    host = glance.Host(tmp_path, glance_api.url, **NO_PIN_PROPERTY)

    pinned = host.manage('cache', 'pin', image_id, '--for', '1h')
    assert pinned.returncode == 0, pinned.stderr
    assert host.listing() == []
    done = host.manage('cache', 'pass')

    assert done.returncode == 0, done.stdout + done.stderr
    assert host.listing() == [glance.cache_name(image_id)]
    assert glance.read(host.path(image_id)) == data


def test_the_list_names_the_image_as_glance_does(glance_api, tmp_path):
    client = glance_api.client()
    image_id = glance.upload(client, os.urandom(MiB))
    name = 'listing-%s' % uuid.uuid4()
    client.images.update(image_id, name=name)
    host = glance.Host(tmp_path, glance_api.url, **NO_PIN_PROPERTY)
    # No instance's metadata names it: the id is found in Glance's listing
    # by nova's naming, and the name is Glance's.
    assert host.manage('precache', image_id).returncode == 0

    listed = host.manage('cache', 'list', '--json', '--image', image_id)

    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row['name'], row['image_id'], row['image_name']) == (
        glance.cache_name(image_id), image_id, name)
