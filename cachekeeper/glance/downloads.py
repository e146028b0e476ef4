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

"""Precache: download a Glance image into the image cache, verified.

Precacher.precache() writes a cache file exactly as nova's fetch_to_raw
would: under nova's lock for the file, into ``<name>.part``, verified
against Glance's hash while it streams, converted to raw into
``<name>.converted`` when ``force_raw_images`` is set, synced, then renamed
into place. A refused or interrupted download leaves nothing behind.
"""

import dataclasses
import errno
import hashlib
import os
import stat
import tempfile
import time

from glanceclient import exc as glance_exc
from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_utils.imageutils import format_inspector
from oslo_utils import units

from cachekeeper.cache import inspect
from cachekeeper.cache import locks
from cachekeeper.cache import names
from cachekeeper.conf import paths
from cachekeeper import fmt
from cachekeeper.glance import client as glance_client

LOG = logging.getLogger(__name__)

# A download file nobody wrote to for this long belongs to a dead download.
# A younger one may be nova's precache, which writes without nova's lock.
STALE_DOWNLOAD_AGE = 600

# Glance's disk_format -> the formats the downloaded data may be detected
# as. A raw disk with a GPT partition table is still a raw image.
ACCEPTED_FORMATS = {
    'raw': ('raw', 'gpt'),
    'qcow2': ('qcow2',),
}


class PrecacheError(Exception):
    """An image was not cached; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class PrecacheResult:
    """A cached image: downloaded now, or found in the cache already."""

    image_id: str
    path: str
    size: int
    downloaded: int = 0
    duration: float = 0.0
    verified_with: str = None
    converted_from: str = None

    def summary(self):
        if not self.downloaded:
            return ('Image %s is cached already: %s (%s)'
                    % (self.image_id, self.path, fmt.mib(self.size)))
        rate = self.downloaded / max(self.duration, 1e-3)
        text = ('Cached image %s as %s (%s): %s downloaded in %.1fs '
                '(%s/s), %s verified' % (
                    self.image_id, self.path, fmt.mib(self.size),
                    fmt.mib(self.downloaded), self.duration, fmt.mib(rate),
                    self.verified_with))
        if self.converted_from:
            text += ', converted from %s to raw' % self.converted_from
        return text


# The multihash algorithms already told to be verified with md5 instead.
_md5_fallbacks_told = set()


def _expected_hash(image, allow_md5_fallback):
    """(hash object, expected hex digest, algorithm) to verify a download.

    Glance's multihash first. Its md5 ``checksum`` when the image has no
    multihash, or, if ``allow_md5_fallback``, when this host cannot compute
    the multihash's algorithm; otherwise that is refused, as glanceclient
    refuses it.
    """
    algorithm = image.get('os_hash_algo')
    value = image.get('os_hash_value')
    if algorithm and value:
        try:
            return hashlib.new(algorithm), value, algorithm
        except ValueError:
            if not allow_md5_fallback:
                raise PrecacheError(
                    'Glance hashed image %s with %s, which this host cannot '
                    'compute; [glance] allow_md5_fallback = true verifies '
                    'such images with their md5 checksum instead'
                    % (image['id'], algorithm))
            if algorithm not in _md5_fallbacks_told:
                _md5_fallbacks_told.add(algorithm)
                LOG.warning('Glance hashes images with %s, which this host '
                            'cannot compute: they are verified with their '
                            'md5 checksum ([glance] allow_md5_fallback)',
                            algorithm)
    checksum = image.get('checksum')
    if checksum:
        return hashlib.md5(usedforsecurity=False), checksum, 'md5'
    raise PrecacheError('Glance has no checksum for image %s, so a download '
                        'could not be verified' % image['id'])


def _supports_direct_io(directory):
    """Whether files in ``directory`` can be opened with O_DIRECT."""
    fd, path = tempfile.mkstemp(dir=directory,
                               prefix=names.DIRECT_IO_PROBE_PREFIX)
    os.close(fd)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC))
        return True
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return False
    finally:
        os.unlink(path)


def _fsync(path, flags=os.O_RDONLY):
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_if_exists(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Precacher:
    """Downloads Glance images into the image cache as nova would."""

    def __init__(self, client, instances_path, cache_dir, force_raw,
                 headroom, inspector, allow_md5_fallback=False):
        self.client = client
        self.instances_path = instances_path
        self.cache_dir = cache_dir
        self.force_raw = force_raw
        self.headroom = headroom
        self.inspector = inspector
        self.allow_md5_fallback = allow_md5_fallback

    @classmethod
    def from_conf(cls, conf, client):
        return cls(client, conf.instances_path,
                   paths.cache_dir(conf),
                   conf.force_raw_images,
                   conf.image_cache.precache_headroom_mb * units.Mi,
                   inspect.Inspector.from_conf(conf),
                   allow_md5_fallback=conf.glance.allow_md5_fallback)

    def precache(self, image_id, progress=None, stop_event=None):
        """Cache image ``image_id`` and return a PrecacheResult.

        An image already cached is verified and touched, as nova's precache
        touches it, and not downloaded again. ``progress(done, total)`` is
        called as bytes arrive; ``stop_event`` (a threading.Event) ends a
        download early. Raises PrecacheError, leaving nothing behind.
        """
        started = time.monotonic()
        name = names.image_cache_name(image_id)
        path = os.path.join(self.cache_dir, name)
        image = self._active_image(image_id)
        converts = self.force_raw and image['disk_format'] != 'raw'
        present = self._present(image, path, converts)
        if present is not None:
            return present
        os.makedirs(self.cache_dir, exist_ok=True)
        self._check_free_space(image_id, image['size'] + (
            (image.get('virtual_size') or image['size']) if converts else 0))
        with locks.nova_lock(self.instances_path, name):
            # nova may have fetched it while this waited for the lock.
            present = self._present(image, path, converts)
            if present is not None:
                return present
            self._clear_dead_download(path)
            created = []
            try:
                result = self._fetch(image, path, created, progress,
                                     stop_event)
            except BaseException:
                for leftover in created:
                    _remove_if_exists(leftover)
                raise
        result = dataclasses.replace(
            result, duration=time.monotonic() - started)
        LOG.info('%s', result.summary())
        return result

    def _active_image(self, image_id):
        try:
            image = self.client.images.get(image_id)
        except glance_exc.HTTPNotFound:
            raise PrecacheError('image %s does not exist in Glance'
                                % image_id)
        except glance_client.SERVICE_ERRORS as e:
            raise PrecacheError('cannot get image %s from Glance: %s'
                                % (image_id, glance_client.error_text(e)))
        if image.get('status') != 'active':
            raise PrecacheError('image %s is %s in Glance, not active'
                                % (image_id, image.get('status')))
        if image.get('disk_format') not in ACCEPTED_FORMATS:
            raise PrecacheError(
                'image %s has disk_format %s; only %s images are '
                'precached' % (image_id, image.get('disk_format'),
                               ' and '.join(sorted(ACCEPTED_FORMATS))))
        if image.get('size') is None:
            raise PrecacheError('Glance gives no size for image %s'
                                % image_id)
        return image

    def _present(self, image, path, converts):
        """A PrecacheResult if ``path`` holds the image, None if missing.

        A file there that does not match the image is left alone (an
        instance may use it) and is an error.
        """
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise PrecacheError('%s exists and is not a regular file; left '
                                'as it is' % path)
        mismatch = self._mismatch(image, path, st, converts)
        if mismatch:
            raise PrecacheError('%s exists but does not hold image %s: %s; '
                                'left as it is' % (path, image['id'],
                                                   mismatch))
        os.utime(path, follow_symlinks=False)
        return PrecacheResult(image_id=image['id'], path=path,
                              size=st.st_size)

    def _mismatch(self, image, path, st, converts):
        if converts:
            # Raw from a conversion: as long as the image's virtual size.
            expected = image.get('virtual_size')
            if expected is not None and st.st_size != expected:
                return 'size %d, the image is %d bytes as raw' % (
                    st.st_size, expected)
            return None
        if st.st_size != image['size']:
            return 'size %d, the image has %d bytes' % (st.st_size,
                                                        image['size'])
        hasher, expected, algorithm = _expected_hash(
            image, self.allow_md5_fallback)
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(units.Mi), b''):
                hasher.update(chunk)
        if hasher.hexdigest() != expected:
            return '%s differs from Glance\'s' % algorithm
        return None

    def _check_free_space(self, image_id, needed):
        st = os.statvfs(self.cache_dir)
        free = st.f_bavail * st.f_frsize
        if free - needed < self.headroom:
            raise PrecacheError(
                'not enough free space in %s for image %s: it needs %s and '
                '%s must stay free ([image_cache] precache_headroom_mb), '
                'but only %s is free' % (
                    self.cache_dir, image_id, fmt.mib(needed),
                    fmt.mib(self.headroom), fmt.mib(free)))

    def _clear_dead_download(self, path):
        """Remove what a dead download left; refuse if one seems alive."""
        for leftover in (path + names.PART_SUFFIX,
                         path + names.CONVERTED_SUFFIX):
            try:
                st = os.lstat(leftover)
            except FileNotFoundError:
                continue
            age = time.time() - st.st_mtime
            if stat.S_ISREG(st.st_mode) and age >= STALE_DOWNLOAD_AGE:
                os.unlink(leftover)
                LOG.info('Removed %s, left by a download that died',
                         leftover)
                continue
            raise PrecacheError(
                '%s exists and was written to %.0fs ago: another download '
                'seems to be running' % (leftover, max(age, 0)))

    def _fetch(self, image, path, created, progress, stop_event):
        """Download, check, convert and rename into place, under the lock.

        Every file made is appended to ``created`` before it is written,
        for the caller to remove if this fails.
        """
        part = path + names.PART_SUFFIX
        downloaded, algorithm = self._download(image, part, created,
                                               progress, stop_event)
        fmt, virtual_size = self._checked_format(image, part)
        converted_from = None
        if self.force_raw and fmt != 'raw':
            # The data is on disk now, so the raw copy is all it still needs.
            self._check_free_space(image['id'], virtual_size)
            converted = path + names.CONVERTED_SUFFIX
            created.append(converted)
            self._convert(part, converted, fmt, virtual_size)
            os.unlink(part)
            final_source, converted_from = converted, fmt
        else:
            final_source = part
        os.rename(final_source, path)
        _fsync(self.cache_dir, os.O_RDONLY | os.O_DIRECTORY)
        return PrecacheResult(image_id=image['id'], path=path,
                              size=os.lstat(path).st_size,
                              downloaded=downloaded,
                              verified_with=algorithm,
                              converted_from=converted_from)

    def _download(self, image, part, created, progress, stop_event):
        """Stream the image into ``part``; verify size and hash; fsync."""
        image_id = image['id']
        hasher, expected, algorithm = _expected_hash(
            image, self.allow_md5_fallback)
        total = image['size']
        try:
            body = self.client.images.data(image_id, do_checksum=False)
        except glance_client.SERVICE_ERRORS as e:
            raise PrecacheError('cannot download image %s: %s'
                                % (image_id, glance_client.error_text(e)))
        if body is None:
            raise PrecacheError('Glance has no data for image %s' % image_id)
        chunks = iter(body)
        done = 0
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                         os.O_CLOEXEC, 0o644)
            created.append(part)
            with open(fd, 'wb') as f:
                while True:
                    if stop_event is not None and stop_event.is_set():
                        raise PrecacheError('download of image %s stopped'
                                            % image_id)
                    try:
                        chunk = next(chunks)
                    except StopIteration:
                        break
                    except glance_client.SERVICE_ERRORS as e:
                        raise PrecacheError(
                            'download of image %s broke off after %d of %d '
                            'bytes: %s' % (image_id, done, total,
                                           glance_client.error_text(e)))
                    f.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                f.flush()
                os.fsync(f.fileno())
        finally:
            close = getattr(chunks, 'close', None)
            if close is not None:
                close()
        if done != total:
            raise PrecacheError('download of image %s ended after %d of %d '
                                'bytes' % (image_id, done, total))
        if hasher.hexdigest() != expected:
            raise PrecacheError(
                'image %s failed verification: its %s is %s, Glance says %s'
                % (image_id, algorithm, hasher.hexdigest(), expected))
        return done, algorithm

    def _checked_format(self, image, part):
        """Return (format, virtual size) of a downloaded image, if safe.

        As nova does: the format inspector must find the format Glance
        claims and pass its safety checks (no backing file, no external
        data file), and qemu-img must find no backing file either.
        """
        image_id = image['id']
        disk_format = image['disk_format']
        try:
            detected = format_inspector.detect_file_format(part)
            detected.safety_check()
        except format_inspector.SafetyCheckFailed as e:
            raise PrecacheError('image %s is refused: %s' % (
                image_id, '; '.join(str(v) for v in e.failures.values())))
        except format_inspector.ImageFormatError as e:
            raise PrecacheError('image %s has no recognisable format: %s'
                                % (image_id, e))
        if str(detected) not in ACCEPTED_FORMATS[disk_format]:
            raise PrecacheError('image %s claims to be %s but is %s' % (
                image_id, disk_format, detected))
        if disk_format == 'raw':
            return 'raw', os.lstat(part).st_size
        try:
            info = self.inspector.inspect(part, disk_format)
        except inspect.InspectError as e:
            raise PrecacheError('image %s cannot be inspected: %s'
                                % (image_id, e.message))
        if info.backing_file:
            raise PrecacheError('image %s is refused: it has a backing file '
                                '(%s)' % (image_id, info.backing_file))
        return disk_format, detected.virtual_size

    def _convert(self, source, target, fmt, virtual_size):
        """Convert ``source`` to raw ``target`` as nova does; fsync it."""
        cache_mode = ('none' if _supports_direct_io(self.cache_dir)
                      else 'writeback')
        try:
            processutils.execute(
                'qemu-img', 'convert', '-t', cache_mode, '-f', fmt,
                '-O', 'raw', source, target,
                env_variables=dict(os.environ, LC_ALL='C', LANG='C'))
        except processutils.ProcessExecutionError as e:
            lines = (e.stderr or '').strip().splitlines()
            raise PrecacheError('qemu-img convert of %s failed: %s' % (
                source, lines[-1] if lines else 'exit code %s'
                % e.exit_code))
        size = os.lstat(target).st_size
        if size != virtual_size:
            raise PrecacheError('qemu-img convert of %s wrote %d bytes, not '
                                '%d' % (source, size, virtual_size))
        _fsync(target)
