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

"""Precache against a real glance-api: verified downloads into the cache,
on real files and real qemu-img, by cachekeeper-manage and Precacher.
"""

import hashlib
import os
import time
import uuid

from oslo_utils.imageutils import format_inspector
import pytest

from cachekeeper.glance import downloads
from tests.lib import glance
from tests.lib import qemu

MiB = 1024 * 1024
HOUR = 3600
DAY = 24 * HOUR


def test_precache_raw_image_with_the_cli_is_nova_s_file_and_idempotent(
        glance_api, tmp_path):
    data = os.urandom(3 * MiB + 12345)
    image_id = glance.upload(glance_api.client(), data)
    host = glance.Host(tmp_path, glance_api.url)

    first = host.manage('precache', image_id)

    assert first.returncode == 0, first.stderr
    assert 'sha512 verified' in first.stdout
    assert host.listing() == [glance.cache_name(image_id)]
    assert glance.read(host.path(image_id)) == data
    assert oct(os.stat(host.path(image_id)).st_mode & 0o777) == '0o644'
    assert os.path.exists(os.path.join(host.instances_path, 'locks',
                                       'nova-' + glance.cache_name(image_id)))
    before = os.stat(host.path(image_id))
    glance.set_age(host.path(image_id), DAY)

    again = host.manage('precache', image_id)

    assert again.returncode == 0, again.stderr
    assert 'is cached already' in again.stdout
    after = os.stat(host.path(image_id))
    assert after.st_ino == before.st_ino
    # Asked for again, it is wanted again: touched, as nova's precache does.
    assert time.time() - after.st_mtime < 60


def test_precache_qcow2_image_is_its_raw_conversion(glance_api, tmp_path):
    upload_path = tmp_path / 'upload.qcow2'
    image_id = glance.upload(glance_api.client(),
                             glance.make_qcow2(upload_path), 'qcow2')
    expected = tmp_path / 'expected.raw'
    qemu.qemu_img('convert', '-f', 'qcow2', '-O', 'raw', upload_path, expected)
    host = glance.Host(tmp_path / 'host', glance_api.url)

    done = host.manage('precache', image_id)

    assert done.returncode == 0, done.stderr
    assert 'converted from qcow2 to raw' in done.stdout
    assert host.listing() == [glance.cache_name(image_id)]
    assert str(format_inspector.detect_file_format(
        host.path(image_id))) == 'raw'
    assert glance.read(host.path(image_id)) == glance.read(expected)


def test_precache_without_force_raw_keeps_the_qcow2(glance_api, tmp_path):
    data = glance.make_qcow2(tmp_path / 'upload.qcow2')
    image_id = glance.upload(glance_api.client(), data, 'qcow2')
    host = glance.Host(tmp_path / 'host', glance_api.url,
                       DEFAULT__force_raw_images='false')

    result = host.precacher().precache(image_id)

    assert result.converted_from is None
    assert glance.read(host.path(image_id)) == data


def test_checksum_mismatch_leaves_nothing(glance_api, tmp_path):
    image_id = glance.upload(glance_api.client(), os.urandom(MiB))
    with open(glance_api.image_path(image_id), 'r+b') as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xff]))
    host = glance.Host(tmp_path, glance_api.url)

    failed = host.manage('precache', image_id)

    assert failed.returncode == 1
    assert 'failed verification: its sha512 is' in failed.stderr
    assert host.listing() == []


# A multihash algorithm that no hashlib computes: one a FIPS policy
# removed looks the same to cachekeeper.
UNKNOWN_ALGORITHM = 'blake3'


def test_unknown_hash_algorithm_is_refused_by_default(glance_api, tmp_path):
    image_id = glance.upload(glance_api.client(), os.urandom(MiB))
    glance_api.set_hash_algorithm(image_id, UNKNOWN_ALGORITHM)
    host = glance.Host(tmp_path, glance_api.url)

    failed = host.manage('precache', image_id)

    assert failed.returncode == 1
    assert ('Glance hashed image %s with %s, which this host cannot compute'
            % (image_id, UNKNOWN_ALGORITHM)) in failed.stderr
    assert host.listing() == []


def test_md5_fallback_is_an_option_and_is_told(glance_api, tmp_path):
    data = os.urandom(MiB)
    client = glance_api.client()
    image_ids = [glance.upload(client, data) for _ in range(2)]
    for image_id in image_ids:
        glance_api.set_hash_algorithm(image_id, UNKNOWN_ALGORITHM)
    host = glance.Host(tmp_path, glance_api.url,
                       glance__allow_md5_fallback='true')

    done = host.manage('precache', *image_ids)

    assert done.returncode == 0, done.stderr
    assert 'md5 verified' in done.stdout
    assert done.stderr.count('they are verified with their md5 checksum') == 1
    for image_id in image_ids:
        assert glance.read(host.path(image_id)) == data


def test_image_without_multihash_is_verified_with_md5(glance_api, tmp_path):
    data = os.urandom(MiB)
    image_id = glance.upload(glance_api.client(), data)
    # As Glance keeps an image uploaded before it had multihash.
    glance_api.set_checksums(image_id, len(data),
                             hashlib.md5(data).hexdigest(), None)
    glance_api.set_hash_algorithm(image_id, None)
    host = glance.Host(tmp_path, glance_api.url)

    done = host.manage('precache', image_id)

    assert done.returncode == 0, done.stderr
    assert 'md5 verified' in done.stdout
    assert 'allow_md5_fallback' not in done.stderr
    assert glance.read(host.path(image_id)) == data


@pytest.mark.parametrize('option', ['backing_file', 'data_file'])
def test_qcow2_with_external_files_is_refused(glance_api, tmp_path, option):
    client = glance_api.client()
    image_id = glance.upload(
        client, glance.make_qcow2(tmp_path / 'good.qcow2'), 'qcow2')
    # Glance itself refuses such uploads, so the stored file is swapped
    # behind its back, with checksums to match.
    bad = tmp_path / 'bad.qcow2'
    qemu.qemu_img('create', '-q', '-f', 'qcow2', '-o',
                  '%s=%s' % (option, tmp_path / 'outside.raw'),
                  *(['-F', 'raw', '-u'] if option == 'backing_file' else []),
                  bad, '16M')
    data = glance.read(bad)
    with open(glance_api.image_path(image_id), 'wb') as f:
        f.write(data)
    glance_api.set_checksums(image_id, len(data),
                         hashlib.md5(data).hexdigest(),
                         hashlib.sha512(data).hexdigest())
    host = glance.Host(tmp_path / 'host', glance_api.url)

    with pytest.raises(downloads.PrecacheError, match='is refused'):
        host.precacher().precache(image_id)

    assert host.listing() == []


def test_shortfall_of_free_space_is_refused_before_download(glance_api,
                                                            tmp_path):
    huge = tmp_path / 'huge.qcow2'
    qemu.qemu_img('create', '-q', '-f', 'qcow2', huge, '1T')
    image_id = glance.upload(glance_api.client(), glance.read(huge), 'qcow2')
    host = glance.Host(tmp_path / 'host', glance_api.url)

    failed = host.manage('precache', image_id)

    assert failed.returncode == 1
    assert 'not enough free space in %s for image %s' % (
        host.cache_dir, image_id) in failed.stderr
    assert host.listing() == []


def test_missing_and_inactive_images_are_errors(glance_api, tmp_path):
    client = glance_api.client()
    queued = client.images.create(name='q', disk_format='raw',
                                  container_format='bare')['id']
    host = glance.Host(tmp_path, glance_api.url)
    missing = str(uuid.uuid4())

    failed = host.manage('precache', missing, queued)

    assert failed.returncode == 1
    assert 'image %s does not exist in Glance' % missing in failed.stderr
    assert 'image %s is queued in Glance, not active' % queued in (
        failed.stderr)


def test_glance_killed_mid_download_leaves_nothing(own_glance_api, tmp_path):
    image_id = glance.upload(own_glance_api.client(), os.urandom(32 * MiB))
    host = glance.Host(tmp_path / 'host', own_glance_api.url)
    arrived = []

    def kill_glance(done, total):
        if not arrived:
            own_glance_api.kill()
        arrived.append(done)

    with pytest.raises(downloads.PrecacheError, match='broke off'):
        host.precacher().precache(image_id, progress=kill_glance)

    assert 0 < arrived[-1] < 32 * MiB
    assert host.listing() == []


def test_dead_download_residue_is_cleared_and_live_one_respected(
        glance_api, tmp_path):
    data = os.urandom(MiB)
    image_id = glance.upload(glance_api.client(), data)
    host = glance.Host(tmp_path, glance_api.url)
    part = host.path(image_id) + '.part'
    with open(part, 'wb') as f:
        f.write(b'half')

    with pytest.raises(downloads.PrecacheError, match='seems to be running'):
        host.precacher().precache(image_id)
    assert host.listing() == [os.path.basename(part)]

    glance.set_age(part, downloads.STALE_DOWNLOAD_AGE + 1)
    host.precacher().precache(image_id)
    assert host.listing() == [glance.cache_name(image_id)]
    assert glance.read(host.path(image_id)) == data


def test_present_file_that_differs_is_left_alone(glance_api, tmp_path):
    image_id = glance.upload(glance_api.client(), os.urandom(MiB))
    host = glance.Host(tmp_path, glance_api.url)
    with open(host.path(image_id), 'wb') as f:
        f.write(os.urandom(MiB))
    before = glance.read(host.path(image_id))

    with pytest.raises(downloads.PrecacheError, match='sha512 differs'):
        host.precacher().precache(image_id)

    assert glance.read(host.path(image_id)) == before
