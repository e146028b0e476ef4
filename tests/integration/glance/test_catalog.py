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

"""The catalog against a real glance-api, in daemon passes: images deleted
in Glance, images pinned by property (and brought back), Glance outages.
"""

import json
import os
import time
import uuid

from cachekeeper.cache import facts
from tests.lib import daemon
from tests.lib import glance

MiB = 1024 * 1024
HOUR = 3600
DAY = 24 * HOUR
GLANCE_WARNING = r' WARNING (cachekeeper\.glance|keystoneauth|glanceclient)'


def run_daemon(host, **image_cache):
    """Start the daemon on ``host``, a pass every second."""
    host.write_config(image_cache__manager_interval='1', **image_cache)
    process = daemon.Daemon(host.root, host.config_file)
    return process


def wait_for_passes(process, count):
    process.wait_for(r'Pass done', count=count, timeout=60)


def last_report(host):
    with open(os.path.join(host.state_path, 'last_pass.json')) as f:
        report = json.load(f)
    return report, {os.path.basename(f['path']): (f['verdict'], f['reason'])
                    for f in report['files']}


def wait_until(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'condition not met in time'
        time.sleep(0.1)


def test_daemon_removes_unused_image_deleted_in_glance_sooner(glance_api,
                                                              tmp_path):
    client = glance_api.client()
    kept = glance.upload(client, b'k' * 4096)
    deleted = glance.upload(client, b'd' * 4096)
    deleted_in_use = glance.upload(client, b'u' * 4096)
    host = glance.Host(tmp_path, glance_api.url)
    for image_id, age in ((kept, 2 * HOUR), (deleted, 2 * HOUR),
                          (deleted_in_use, 10 * DAY)):
        with open(host.path(image_id), 'wb') as f:
            f.truncate(MiB)
        glance.set_age(host.path(image_id), age)
    host.instance_using(deleted_in_use)
    client.images.delete(deleted)
    client.images.delete(deleted_in_use)
    process = run_daemon(host)
    try:
        wait_for_passes(process, 3)
    finally:
        process.stop()
        process.kill()

    report, files = last_report(host)
    assert report['errors'] == []
    assert files[glance.cache_name(kept)] == (facts.TOO_YOUNG,
                                              'unused, 2h of 1d')
    assert glance.cache_name(deleted) not in files
    assert not os.path.exists(host.path(deleted))
    removal = process.lines(glance.cache_name(deleted))
    assert removal and 'image deleted in Glance; unused for 2h (minimum 1h)' \
        in removal[0]
    verdict, reason = files[glance.cache_name(deleted_in_use)]
    assert verdict == facts.IN_USE
    assert reason.endswith('; its image no longer exists in Glance')
    assert os.path.exists(host.path(deleted_in_use))
    assert len(process.lines(
        'WARNING .*Image cache file %s is in use, but its image no longer '
        'exists in Glance; kept' % host.path(deleted_in_use))) == 1


def test_daemon_reuses_the_listing_within_its_ttl(glance_api, tmp_path):
    client = glance_api.client()
    deleted_later = glance.upload(client, b'x' * 4096)
    host = glance.Host(tmp_path, glance_api.url, glance__image_list_ttl='3600')
    with open(host.path(deleted_later), 'wb') as f:
        f.truncate(MiB)
    glance.set_age(host.path(deleted_later), 2 * HOUR)
    process = run_daemon(host)
    try:
        wait_for_passes(process, 1)
        client.images.delete(deleted_later)
        # An image newer than the listing, cached with an old mtime.
        created_later = glance.upload(client, b'y' * 4096)
        with open(host.path(created_later), 'wb') as f:
            f.truncate(MiB)
        glance.set_age(host.path(created_later), 2 * HOUR)
        wait_for_passes(process, 3)
    finally:
        process.stop()
        process.kill()

    files = last_report(host)[1]
    for image_id in (deleted_later, created_later):
        assert files[glance.cache_name(image_id)] == (facts.TOO_YOUNG,
                                                      'unused, 2h of 1d')


def test_daemon_never_removes_pinned_images_and_brings_them_back(
        glance_api, tmp_path):
    client = glance_api.client()
    data = os.urandom(MiB)
    by_property = glance.upload(client, data, cachekeeper_pinned='true')
    by_config = glance.upload(client, os.urandom(MiB))
    not_in_glance = str(uuid.uuid4())
    host = glance.Host(
        tmp_path, glance_api.url,
        image_cache__pinned_images='%s,%s' % (by_config, not_in_glance),
        image_cache__remove_unused_original_minimum_age_seconds='0')
    host.precacher().precache(by_property)
    glance.set_age(host.path(by_property), 30 * DAY)
    process = run_daemon(host)
    try:
        wait_for_passes(process, 1)
        # Missing and pinned by configuration: downloaded after a pass.
        wait_until(lambda: os.path.exists(host.path(by_config)))
        assert last_report(host)[1][glance.cache_name(by_property)] == (
            facts.PINNED,
            'pinned by its Glance image property cachekeeper_pinned=true')

        os.unlink(host.path(by_property))
        wait_until(lambda: os.path.exists(host.path(by_property)))
        wait_for_passes(process, len(process.lines('Pass done')) + 1)
    finally:
        process.stop()
        process.kill()

    assert glance.read(host.path(by_property)) == data
    assert last_report(host)[1][glance.cache_name(by_config)][0] == (
        facts.PINNED)
    assert process.lines('Cached image %s as %s' % (
        by_property, host.path(by_property)))
    # Tried at every pass, told once.
    assert len(process.lines(
        'WARNING .*Cannot cache pinned image %s: image %s does not exist '
        'in Glance' % (not_in_glance, not_in_glance))) == 1
    assert not os.path.exists(host.path(not_in_glance))


def test_daemon_goes_on_without_glance_and_says_so_once(own_glance_api,
                                                        tmp_path):
    client = own_glance_api.client()
    gone = glance.upload(client, b'g' * 4096)
    host = glance.Host(tmp_path, own_glance_api.url,
                       glance__image_list_ttl='0',
                       glance__connect_retries='1',
                       glance__connect_retry_delay='0.1')
    with open(host.path(gone), 'wb') as f:
        f.truncate(MiB)
    glance.set_age(host.path(gone), 2 * HOUR)
    client.images.delete(gone)
    own_glance_api.stop()
    process = run_daemon(host)
    try:
        wait_for_passes(process, 3)
        report, files = last_report(host)
        assert report['errors'] == []
        # Without a listing nothing counts as deleted.
        assert files[glance.cache_name(gone)] == (facts.TOO_YOUNG,
                                                  'unused, 2h of 1d')
        # One warning, from cachekeeper; none from keystoneauth's retries.
        assert len(process.lines(GLANCE_WARNING)) == 1
        assert process.lines(' WARNING cachekeeper.glance.catalog .* Glance '
                             'is unavailable; until it is back')

        own_glance_api.start()
        process.wait_for('INFO .*Glance is available again')
        wait_until(lambda: not os.path.exists(host.path(gone)))
    finally:
        process.stop()
        process.kill()

    assert len(process.lines(GLANCE_WARNING)) == 1
    assert process.lines('Cache pass failed') == []
