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

"""Glance integration against a real glance-api: precache, deleted images,
pinned images and Glance outages, on real files and real qemu-img.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import uuid

from oslo_config import cfg
from oslo_utils.imageutils import format_inspector
import pytest

from cachekeeper.cache import facts
import cachekeeper.conf
from cachekeeper import glance
from tests.system import daemon

MANAGE = os.path.join(os.path.dirname(sys.executable), 'cachekeeper-manage')
MiB = 1024 * 1024
HOUR = 3600
DAY = 24 * HOUR
GLANCE_WARNING = r' WARNING (cachekeeper\.glance|keystoneauth|glanceclient)'


def cache_name(image_id):
    return hashlib.sha1(image_id.encode('utf-8')).hexdigest()


def qemu_img(*args):
    subprocess.run(['qemu-img'] + [str(a) for a in args], check=True,
                   capture_output=True, timeout=60)


def set_age(path, age):
    when = time.time() - age
    os.utime(path, (when, when))


def read(path):
    with open(path, 'rb') as f:
        return f.read()


def upload(client, data, disk_format='raw', **properties):
    """Create an active public image holding ``data``; return its id."""
    image = client.images.create(name='test', disk_format=disk_format,
                                 container_format='bare',
                                 visibility='public', **properties)
    client.images.upload(image['id'], io.BytesIO(data))
    return image['id']


def make_qcow2(path, size='16M'):
    """A self-contained qcow2 with data at a few places; return its bytes."""
    qemu_img('create', '-q', '-f', 'qcow2', path, size)
    subprocess.run(['qemu-io', '-f', 'qcow2',
                    '-c', 'write -P 0xab 1M 2M',
                    '-c', 'write -P 0x5c 9M 300k', str(path)],
                   check=True, capture_output=True, timeout=60)
    return read(path)


class Host:
    """An instances_path, a state_path and a config using one Glance."""

    def __init__(self, root, glance_url, **options):
        self.root = str(root)
        self.instances_path = os.path.join(self.root, 'instances')
        self.cache_dir = os.path.join(self.instances_path, '_base')
        self.state_path = os.path.join(self.root, 'state')
        self.config_file = os.path.join(self.root, 'cachekeeper.conf')
        self.glance_url = glance_url
        self.options = options
        os.makedirs(self.cache_dir)
        os.makedirs(self.state_path, mode=0o700)
        self.write_config()

    def write_config(self, **options):
        """Write the config file; options are named ``group__option``."""
        sections = {
            'DEFAULT': {'instances_path': self.instances_path,
                        'state_path': self.state_path,
                        'host': 'compute-test'},
            'glance': {'auth_type': 'none',
                       'endpoint_override': self.glance_url},
            'image_cache': {},
        }
        for key, value in dict(self.options, **options).items():
            group, name = key.split('__')
            sections[group][name] = value
        daemon.write_config(self.config_file, **sections)

    def conf(self):
        conf = cfg.ConfigOpts()
        cachekeeper.conf.register_opts(conf)
        conf(['--config-file', self.config_file], project='cachekeeper',
             default_config_files=[])
        return conf

    def path(self, image_id):
        return os.path.join(self.cache_dir, cache_name(image_id))

    def listing(self):
        return sorted(os.listdir(self.cache_dir))

    def precacher(self):
        conf = self.conf()
        return glance.Precacher.from_conf(conf, glance.make_client(conf))

    def manage(self, *argv):
        return subprocess.run(
            [MANAGE, '--config-file', self.config_file] + list(argv),
            capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL)

    def instance_using(self, image_id):
        """An instance whose disk is a qcow2 overlay of the image's file."""
        directory = os.path.join(self.instances_path, str(uuid.uuid4()))
        os.makedirs(directory)
        disk = os.path.join(directory, 'disk')
        qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw',
                 '-b', self.path(image_id), disk)
        with open(os.path.join(directory, 'disk.info'), 'w') as f:
            json.dump({disk: 'qcow2'}, f)


# precache


def test_precache_raw_image_with_the_cli_is_nova_s_file_and_idempotent(
        glance_api, tmp_path):
    data = os.urandom(3 * MiB + 12345)
    image_id = upload(glance_api.client(), data)
    host = Host(tmp_path, glance_api.url)

    first = host.manage('precache', image_id)

    assert first.returncode == 0, first.stderr
    assert 'sha512 verified' in first.stdout
    assert host.listing() == [cache_name(image_id)]
    assert read(host.path(image_id)) == data
    assert oct(os.stat(host.path(image_id)).st_mode & 0o777) == '0o644'
    assert os.path.exists(os.path.join(host.instances_path, 'locks',
                                       'nova-' + cache_name(image_id)))
    before = os.stat(host.path(image_id))
    set_age(host.path(image_id), DAY)

    again = host.manage('precache', image_id)

    assert again.returncode == 0, again.stderr
    assert 'is cached already' in again.stdout
    after = os.stat(host.path(image_id))
    assert after.st_ino == before.st_ino
    # Asked for again, it is wanted again: touched, as nova's precache does.
    assert time.time() - after.st_mtime < 60


def test_precache_qcow2_image_is_its_raw_conversion(glance_api, tmp_path):
    upload_path = tmp_path / 'upload.qcow2'
    image_id = upload(glance_api.client(), make_qcow2(upload_path), 'qcow2')
    expected = tmp_path / 'expected.raw'
    qemu_img('convert', '-f', 'qcow2', '-O', 'raw', upload_path, expected)
    host = Host(tmp_path / 'host', glance_api.url)

    done = host.manage('precache', image_id)

    assert done.returncode == 0, done.stderr
    assert 'converted from qcow2 to raw' in done.stdout
    assert host.listing() == [cache_name(image_id)]
    assert str(format_inspector.detect_file_format(
        host.path(image_id))) == 'raw'
    assert read(host.path(image_id)) == read(expected)


def test_precache_without_force_raw_keeps_the_qcow2(glance_api, tmp_path):
    data = make_qcow2(tmp_path / 'upload.qcow2')
    image_id = upload(glance_api.client(), data, 'qcow2')
    host = Host(tmp_path / 'host', glance_api.url,
                DEFAULT__force_raw_images='false')

    result = host.precacher().precache(image_id)

    assert result.converted_from is None
    assert read(host.path(image_id)) == data


def test_checksum_mismatch_leaves_nothing(glance_api, tmp_path):
    image_id = upload(glance_api.client(), os.urandom(MiB))
    with open(glance_api.image_path(image_id), 'r+b') as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xff]))
    host = Host(tmp_path, glance_api.url)

    failed = host.manage('precache', image_id)

    assert failed.returncode == 1
    assert 'failed verification: its sha512 is' in failed.stderr
    assert host.listing() == []


@pytest.mark.parametrize('option', ['backing_file', 'data_file'])
def test_qcow2_with_external_files_is_refused(glance_api, tmp_path, option):
    client = glance_api.client()
    image_id = upload(client, make_qcow2(tmp_path / 'good.qcow2'), 'qcow2')
    # Glance itself refuses such uploads, so the stored file is swapped
    # behind its back, with checksums to match.
    bad = tmp_path / 'bad.qcow2'
    qemu_img('create', '-q', '-f', 'qcow2', '-o',
             '%s=%s' % (option, tmp_path / 'outside.raw'),
             *(['-F', 'raw', '-u'] if option == 'backing_file' else []),
             bad, '16M')
    data = read(bad)
    with open(glance_api.image_path(image_id), 'wb') as f:
        f.write(data)
    glance_api.set_checksums(image_id, len(data),
                         hashlib.md5(data).hexdigest(),
                         hashlib.sha512(data).hexdigest())
    host = Host(tmp_path / 'host', glance_api.url)

    with pytest.raises(glance.PrecacheError, match='is refused'):
        host.precacher().precache(image_id)

    assert host.listing() == []


def test_shortfall_of_free_space_is_refused_before_download(glance_api,
                                                            tmp_path):
    huge = tmp_path / 'huge.qcow2'
    qemu_img('create', '-q', '-f', 'qcow2', huge, '1T')
    image_id = upload(glance_api.client(), read(huge), 'qcow2')
    host = Host(tmp_path / 'host', glance_api.url)

    failed = host.manage('precache', image_id)

    assert failed.returncode == 1
    assert 'not enough free space in %s for image %s' % (
        host.cache_dir, image_id) in failed.stderr
    assert host.listing() == []


def test_missing_and_inactive_images_are_errors(glance_api, tmp_path):
    client = glance_api.client()
    queued = client.images.create(name='q', disk_format='raw',
                                  container_format='bare')['id']
    host = Host(tmp_path, glance_api.url)
    missing = str(uuid.uuid4())

    failed = host.manage('precache', missing, queued)

    assert failed.returncode == 1
    assert 'image %s does not exist in Glance' % missing in failed.stderr
    assert 'image %s is queued in Glance, not active' % queued in (
        failed.stderr)


def test_glance_killed_mid_download_leaves_nothing(own_glance_api, tmp_path):
    image_id = upload(own_glance_api.client(), os.urandom(32 * MiB))
    host = Host(tmp_path / 'host', own_glance_api.url)
    arrived = []

    def kill_glance(done, total):
        if not arrived:
            own_glance_api.kill()
        arrived.append(done)

    with pytest.raises(glance.PrecacheError, match='broke off'):
        host.precacher().precache(image_id, progress=kill_glance)

    assert 0 < arrived[-1] < 32 * MiB
    assert host.listing() == []


def test_dead_download_residue_is_cleared_and_live_one_respected(
        glance_api, tmp_path):
    data = os.urandom(MiB)
    image_id = upload(glance_api.client(), data)
    host = Host(tmp_path, glance_api.url)
    part = host.path(image_id) + '.part'
    with open(part, 'wb') as f:
        f.write(b'half')

    with pytest.raises(glance.PrecacheError, match='seems to be running'):
        host.precacher().precache(image_id)
    assert host.listing() == [os.path.basename(part)]

    set_age(part, glance.STALE_DOWNLOAD_AGE + 1)
    host.precacher().precache(image_id)
    assert host.listing() == [cache_name(image_id)]
    assert read(host.path(image_id)) == data


def test_present_file_that_differs_is_left_alone(glance_api, tmp_path):
    image_id = upload(glance_api.client(), os.urandom(MiB))
    host = Host(tmp_path, glance_api.url)
    with open(host.path(image_id), 'wb') as f:
        f.write(os.urandom(MiB))
    before = read(host.path(image_id))

    with pytest.raises(glance.PrecacheError, match='sha512 differs'):
        host.precacher().precache(image_id)

    assert read(host.path(image_id)) == before


# Daemon passes


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
    kept = upload(client, b'k' * 4096)
    deleted = upload(client, b'd' * 4096)
    deleted_in_use = upload(client, b'u' * 4096)
    host = Host(tmp_path, glance_api.url)
    for image_id, age in ((kept, 2 * HOUR), (deleted, 2 * HOUR),
                          (deleted_in_use, 10 * DAY)):
        with open(host.path(image_id), 'wb') as f:
            f.truncate(MiB)
        set_age(host.path(image_id), age)
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
    assert files[cache_name(kept)] == (facts.TOO_YOUNG, 'unused, 2h of 1d')
    assert cache_name(deleted) not in files
    assert not os.path.exists(host.path(deleted))
    removal = process.lines(cache_name(deleted))
    assert removal and 'image deleted in Glance; unused for 2h (minimum 1h)' \
        in removal[0]
    verdict, reason = files[cache_name(deleted_in_use)]
    assert verdict == facts.IN_USE
    assert reason.endswith('; its image no longer exists in Glance')
    assert os.path.exists(host.path(deleted_in_use))
    assert len(process.lines(
        'WARNING .*Image cache file %s is in use, but its image no longer '
        'exists in Glance; kept' % host.path(deleted_in_use))) == 1


def test_daemon_reuses_the_listing_within_its_ttl(glance_api, tmp_path):
    client = glance_api.client()
    deleted_later = upload(client, b'x' * 4096)
    host = Host(tmp_path, glance_api.url, glance__image_list_ttl='3600')
    with open(host.path(deleted_later), 'wb') as f:
        f.truncate(MiB)
    set_age(host.path(deleted_later), 2 * HOUR)
    process = run_daemon(host)
    try:
        wait_for_passes(process, 1)
        client.images.delete(deleted_later)
        # An image newer than the listing, cached with an old mtime.
        created_later = upload(client, b'y' * 4096)
        with open(host.path(created_later), 'wb') as f:
            f.truncate(MiB)
        set_age(host.path(created_later), 2 * HOUR)
        wait_for_passes(process, 3)
    finally:
        process.stop()
        process.kill()

    files = last_report(host)[1]
    for image_id in (deleted_later, created_later):
        assert files[cache_name(image_id)] == (facts.TOO_YOUNG,
                                               'unused, 2h of 1d')


def test_daemon_never_removes_pinned_images_and_brings_them_back(
        glance_api, tmp_path):
    client = glance_api.client()
    data = os.urandom(MiB)
    by_property = upload(client, data, cachekeeper_pinned='true')
    by_config = upload(client, os.urandom(MiB))
    not_in_glance = str(uuid.uuid4())
    host = Host(tmp_path, glance_api.url,
                image_cache__pinned_images='%s,%s' % (by_config,
                                                      not_in_glance),
                image_cache__remove_unused_original_minimum_age_seconds='0')
    host.precacher().precache(by_property)
    set_age(host.path(by_property), 30 * DAY)
    process = run_daemon(host)
    try:
        wait_for_passes(process, 1)
        # Missing and pinned by configuration: downloaded after a pass.
        wait_until(lambda: os.path.exists(host.path(by_config)))
        assert last_report(host)[1][cache_name(by_property)] == (
            facts.PINNED,
            'pinned by its Glance image property cachekeeper_pinned=true')

        os.unlink(host.path(by_property))
        wait_until(lambda: os.path.exists(host.path(by_property)))
        wait_for_passes(process, len(process.lines('Pass done')) + 1)
    finally:
        process.stop()
        process.kill()

    assert read(host.path(by_property)) == data
    assert last_report(host)[1][cache_name(by_config)][0] == facts.PINNED
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
    gone = upload(client, b'g' * 4096)
    host = Host(tmp_path, own_glance_api.url,
                glance__image_list_ttl='0',
                glance__connect_retries='1',
                glance__connect_retry_delay='0.1')
    with open(host.path(gone), 'wb') as f:
        f.truncate(MiB)
    set_age(host.path(gone), 2 * HOUR)
    client.images.delete(gone)
    own_glance_api.stop()
    process = run_daemon(host)
    try:
        wait_for_passes(process, 3)
        report, files = last_report(host)
        assert report['errors'] == []
        # Without a listing nothing counts as deleted.
        assert files[cache_name(gone)] == (facts.TOO_YOUNG,
                                           'unused, 2h of 1d')
        # One warning, from cachekeeper; none from keystoneauth's retries.
        assert len(process.lines(GLANCE_WARNING)) == 1
        assert process.lines(' WARNING cachekeeper.glance .* Glance is '
                             'unavailable; until it is back')

        own_glance_api.start()
        process.wait_for('INFO .*Glance is available again')
        wait_until(lambda: not os.path.exists(host.path(gone)))
    finally:
        process.stop()
        process.kill()

    assert len(process.lines(GLANCE_WARNING)) == 1
    assert process.lines('Cache pass failed') == []
