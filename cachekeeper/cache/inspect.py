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

"""Disk inspection: what format a disk has and which file backs it.

``qemu-img info`` is the authority, as in nova, and runs under nova's
address space and CPU time limits plus a wall-clock timeout. It is always
told the format (``-f``): a format nobody recorded is detected with
oslo.utils' format inspector, as nova's images.get_image_format does, never
by letting qemu-img probe guest-written data.

Detection reads the first 64 KiB of the disk once and looks there for the
magic of each format the format inspector knows, where its inspector looks
for it (and, for a VMDK text descriptor, for a first sector of text). No
magic means raw, as the inspector finds when no format matches. One magic
means that format once its own inspector agrees (a qcow2 magic followed by
a full sector, as in nova's overlays, needs no inspector). Anything else
(two magics, an inspector that disagrees) runs every inspector over up to
1 MiB, which refuses a disk that matches two formats, but for an ISO with
a partition table in front: an ISO, as in nova.

Two things spare most work: the answers kept from earlier passes for disks
that did not change (inspect_cache: detected formats and inspections
alike), and, with ``[image_cache] inspect_method = auto``, the qcow2 header
reader for the plain qcow2 overlays nova makes (qcow2); qemu-img answers
for everything else.
"""

import concurrent.futures
import contextlib
import dataclasses
import importlib.metadata
import io
import os
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
import threading

from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_utils import imageutils
from oslo_utils.imageutils import format_inspector
from oslo_utils import units

from cachekeeper.cache import inspect_cache
from cachekeeper.cache import qcow2
from cachekeeper import progress as pass_progress

LOG = logging.getLogger(__name__)

# [image_cache] inspect_method: AUTO, or inspect_cache.QEMU_IMG (the method
# is named as the answers it finds are stored).
AUTO = 'auto'

# Formats that cannot name a backing file: a disk in one of them ends its
# chain and needs no qemu-img call. Names are both qemu's and the format
# inspector's (which says 'vhd' for qemu's 'vpc' and knows 'iso', 'gpt').
FORMATS_WITHOUT_BACKING = frozenset(
    ('raw', 'iso', 'gpt', 'luks', 'vhd', 'vpc', 'vhdx', 'vdi'))

# qemu-img info prints a few KiB; far more means something is wrong (or an
# image with an absurd number of snapshots), and is not worth parsing.
MAX_OUTPUT_BYTES = 8 * units.Mi

# The format inspector decides within the first 256 KiB for real images;
# a crafted header can point it further, so the read stops here.
MAX_DETECT_BYTES = units.Mi
# The first read of a disk whose format is detected holds every magic below
# (an ISO's volume descriptor is at 32 KiB). It is also the first chunk
# every inspector is given, so a VMDK text descriptor is read from the
# same bytes on either path.
_DETECT_CHUNK = 64 * units.Ki

# Where oslo.utils' format inspector looks for the magic of each format:
# (format, offset, magic). Each of its inspectors matches only a disk with
# its magic there (or, for VMDK, a text descriptor: _is_text), so a disk
# without any is raw to them all.
_MAGIC = (
    ('qcow2', 0, b'QFI\xfb'),
    ('qed', 0, b'QED\x00'),
    ('vhd', 0, b'conectix'),
    ('vhdx', 0, b'vhdxfile'),
    ('vmdk', 0, b'KDMV'),
    ('luks', 0, b'LUKS\xba\xbe'),
    ('vdi', 0x40, b'\x7f\x10\xda\xbe'),
    # The MBR boot signature, in front of GPT disks too.
    ('gpt', 510, b'\x55\xaa'),
    # The first volume descriptor, after the 32 KiB system area.
    ('iso', 0x8001, b'CD001'),
    ('iso', 0x8001, b'NSR02'),
    ('iso', 0x8001, b'NSR03'),
)
# The VMDK inspector reads a text descriptor from a disk that starts with
# at least this many bytes of text.
_VMDK_MIN_TEXT = 64
# The VMDK inspector looks for text in the first sector, and the qcow2
# inspector matches its magic once it holds one.
_SECTOR = 512
# An oslo.utils that knows a format _MAGIC does not runs every inspector
# over every disk.
_MAGIC_KNOWS_ALL = set(format_inspector.ALL_FORMATS) <= {
    entry[0] for entry in _MAGIC} | {'raw'}
# Kept with each detected format: another release of the format inspector
# may tell formats apart otherwise, and then detects every disk again.
DETECTOR = 'oslo.utils %s' % importlib.metadata.version('oslo.utils')

# How long to wait for a killed qemu-img to be reaped. SIGKILL cannot end a
# process stuck in uninterruptible I/O (a dead NFS server), and a pass must
# not hang on it.
_REAP_TIMEOUT = 10


class InspectError(Exception):
    """A disk could not be inspected; ``message`` says why in one line."""

    def __init__(self, path, message):
        super().__init__('%s: %s' % (path, message))
        self.path = path
        self.message = message


@dataclasses.dataclass(frozen=True)
class DiskInfo:
    """What the header of one disk says about its chain.

    ``backing_file`` is the name as written in the header (it may be
    relative to the directory of ``path``), or None; so is ``data_file``,
    the external file a qcow2 keeps its guest data in.
    """

    path: str
    format: str
    backing_file: str = None
    backing_format: str = None
    data_file: str = None


def _data_file(format_specific):
    """Return the external data file named in qemu-img's qcow2 details.

    They look like {'type': 'qcow2', 'data': {'data-file': NAME, ...}}.
    """
    if not isinstance(format_specific, dict):
        return None
    data = format_specific.get('data')
    return data.get('data-file') if isinstance(data, dict) else None


def has_backing(fmt):
    """Whether a disk in format ``fmt`` may have a backing file."""
    return fmt not in FORMATS_WITHOUT_BACKING


def _read_output(output):
    output.seek(0)
    return os.fsdecode(output.read(MAX_OUTPUT_BYTES + 1))


def _one_line(text, limit=200):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ''
    return line if len(line) <= limit else line[:limit] + '...'


@contextlib.contextmanager
def _any_error_as_inspect_error(path):
    # A pass must survive any one disk: whatever else goes wrong is
    # reported like any other inspection failure.
    try:
        yield
    except InspectError:
        raise
    except Exception as e:
        LOG.debug('Unexpected error inspecting %s', path, exc_info=True)
        raise InspectError(path, 'unexpected error: %s' % e)


def _is_text(head):
    """Whether the VMDK inspector reads ``head`` as a text descriptor."""
    if len(head) < _VMDK_MIN_TEXT:
        return False
    try:
        sector = head[:_SECTOR].decode('ascii')
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c.isspace() for c in sector)


def _candidates(head):
    """The formats whose inspector may match a disk that starts so."""
    found = {fmt for fmt, offset, magic in _MAGIC
             if head.startswith(magic, offset)}
    if _is_text(head):
        found.add('vmdk')
    return found


def _matches(head, fmt):
    """Whether the inspector of ``fmt`` alone matches ``head``."""
    wrapper = format_inspector.InspectWrapper(io.BytesIO(head),
                                              allowed_formats=[fmt])
    wrapper.read(len(head))
    wrapper.close()
    try:
        return str(wrapper.format) == fmt
    except Exception:
        # No match (ImageFormatError) or an inspector that fails on this
        # content: either way the full detection decides.
        return False


def _detect_all(source):
    """Run every inspector over the start of ``source``; return a name."""
    wrapper = format_inspector.InspectWrapper(source)
    try:
        while source.tell() < MAX_DETECT_BYTES:
            if not wrapper.read(_DETECT_CHUNK) or wrapper.formats:
                break
    finally:
        # Ends the inspectors still waiting for data, as at end of file.
        wrapper.close()
    if {str(match) for match in wrapper.formats} == {'iso', 'gpt'}:
        # As in nova: a bootable ISO may have a partition table in front.
        return 'iso'
    # Raises ImageFormatError when more formats match.
    return str(wrapper.format)


def _disk_stat(path):
    try:
        st = os.stat(path)
    except OSError as e:
        raise InspectError(path, e.strerror or str(e))
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        # qemu-img would block opening a FIFO.
        raise InspectError(path, 'not a regular file')
    return st


def _open_regular(path):
    """Open ``path`` to read it; return (its fd, the stat of what is open).

    The fd is None (nothing is left open) when it is not a regular file: a
    FIFO is never waited on. Raises InspectError when it cannot be opened.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise InspectError(path, e.strerror or str(e))
    try:
        # The stat of what is read, not of what the path named before.
        st = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise InspectError(path, e.strerror or str(e))
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None, st
    return fd, st


class Inspector:
    """Inspects disks: from the cache, the qcow2 header, or qemu-img.

    qemu-img runs under limits, one call or a bounded pool of them.
    ``method`` is AUTO (read plain qcow2 headers) or inspect_cache.QEMU_IMG
    (ask qemu-img about every disk), ``cache`` an
    inspect_cache.InspectionCache or None. The counters say how each disk
    was answered, and how each format was detected: ``full_detections`` of
    the ``format_detections`` ran every inspector.
    """

    def __init__(self, cpu_time_limit=30, address_space_limit_gb=2,
                 timeout=60, workers=4, method=inspect_cache.QEMU_IMG,
                 cache=None):
        self.cpu_time_limit = cpu_time_limit
        self.address_space_limit = address_space_limit_gb * units.Gi
        self.timeout = timeout
        self.workers = workers
        self.method = method
        self.cache = cache
        self.qemu_img_calls = 0
        self.header_reads = 0
        self.cache_hits = 0
        self.format_detections = 0
        self.full_detections = 0
        self.detection_cache_hits = 0
        self._calls_lock = threading.Lock()
        # util-linux prlimit sets the limits and execs qemu-img in ~1 ms;
        # oslo's prlimit wrapper would start a Python interpreter per call.
        self._prlimit = shutil.which('prlimit')
        self._trusted = ((inspect_cache.QEMU_IMG, inspect_cache.HEADER)
                         if method == AUTO else (inspect_cache.QEMU_IMG,))

    @classmethod
    def from_conf(cls, conf, cache=None):
        return cls(
            cpu_time_limit=conf.libvirt.images_cpu_time_limit,
            address_space_limit_gb=conf.libvirt.images_address_space_limit,
            timeout=conf.image_cache.inspect_timeout,
            workers=conf.image_cache.inspect_workers,
            method=conf.image_cache.inspect_method,
            cache=cache)

    def save(self, prune=False):
        """Keep this pass's answers for the next (see InspectionCache)."""
        if self.cache is not None:
            self.cache.save(prune=prune)

    def keep(self, inodes):
        """See InspectionCache.keep."""
        if self.cache is not None:
            self.cache.keep(inodes)

    def _command(self, path, fmt):
        command = ['qemu-img', 'info', '--output=json', '--force-share',
                   '-f', fmt, path]
        if self._prlimit:
            command = [self._prlimit,
                       '--as=%d' % self.address_space_limit,
                       '--cpu=%d' % self.cpu_time_limit,
                       '--'] + command
        return command

    def _prepare_child(self, out, err):
        # Runs in the child between fork and exec. A session of its own lets
        # a timeout kill qemu-img together with anything it started.
        os.setsid()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (MAX_OUTPUT_BYTES + 1, MAX_OUTPUT_BYTES + 1))
        if not self._prlimit:
            resource.setrlimit(resource.RLIMIT_AS,
                               (self.address_space_limit,
                                self.address_space_limit))
            resource.setrlimit(resource.RLIMIT_CPU,
                               (self.cpu_time_limit, self.cpu_time_limit))

    def _run(self, path, fmt):
        """Run qemu-img info and return its standard output."""
        # What qemu-img prints goes to files it cannot make larger than the
        # limit (it dies of SIGXFSZ first): through pipes, all of it would
        # pile up in this process's memory until the timeout.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            self._execute(path, fmt, out, err)
            return _read_output(out)

    def _execute(self, path, fmt, out, err):
        """Run qemu-img info, printing into the files ``out`` and ``err``."""
        spawned = []

        def on_execute(process):
            spawned.append(process)
            with self._calls_lock:
                self.qemu_img_calls += 1

        env = dict(os.environ, LC_ALL='C', LANG='C')
        try:
            processutils.execute(
                *self._command(path, fmt),
                env_variables=env,
                preexec_fn=lambda: self._prepare_child(out, err),
                on_execute=on_execute,
                timeout=self.timeout)
        except processutils.ProcessExecutionError as e:
            if any(os.fstat(f.fileno()).st_size > MAX_OUTPUT_BYTES
                   for f in (out, err)):
                reason = 'qemu-img info printed more than %d bytes' % (
                    MAX_OUTPUT_BYTES)
            elif e.exit_code is not None and e.exit_code < 0:
                reason = 'qemu-img info was killed by signal %d' % (
                    -e.exit_code)
            else:
                reason = 'qemu-img info failed with exit code %s' % (
                    e.exit_code)
            detail = _one_line(_read_output(err))
            raise InspectError(
                path, '%s: %s' % (reason, detail) if detail else reason)
        except OSError as e:
            raise InspectError(path, 'cannot run qemu-img: %s' % e)
        except Exception as e:
            # A timeout: processutils re-raises TimeoutExpired and leaves
            # the process unreaped. eventlet's green subprocess module raises
            # its own TimeoutExpired class, so the unreaped process is what
            # tells a timeout apart.
            if (spawned and self._reap(path, spawned[0])) or isinstance(
                    e, subprocess.TimeoutExpired):
                raise InspectError(
                    path, 'qemu-img info did not finish within %s s and '
                    'was killed' % self.timeout)
            raise
        finally:
            # Whatever happened, qemu-img must not outlive this call.
            for process in spawned:
                self._reap(path, process)

    @staticmethod
    def _reap(path, process):
        """Kill and reap ``process`` unless it was reaped; True if it was not.

        The whole process group is killed, even once ``process`` was
        reaped: nothing qemu-img left behind may outlive the call.
        """
        unfinished = process.returncode is None
        # A group's id is not handed out again while a member lives (and
        # pids are handed out in turn), so it still names qemu-img's group.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if unfinished:
            try:
                process.wait(timeout=_REAP_TIMEOUT)
            except Exception:
                LOG.error('qemu-img (pid %d) inspecting %s does not die '
                          'after SIGKILL', process.pid, path)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        return unfinished

    def inspect(self, path, fmt):
        """Return the DiskInfo of ``path``, read as format ``fmt``.

        Raises InspectError, and nothing else, when that cannot be done.
        """
        path = os.path.abspath(path)
        with _any_error_as_inspect_error(path):
            st = _disk_stat(path)
            info = self._known(path, fmt, st)
        return info or self._ask_qemu_img(path, fmt, st)

    def _known(self, path, fmt, st):
        """The DiskInfo from the cache or the qcow2 header, or None."""
        if self.cache is not None:
            found = self.cache.lookup(st, fmt, self._trusted)
            if found is not None:
                self.cache_hits += 1
                return DiskInfo(path, fmt, *found)
        if self.method == AUTO and fmt == 'qcow2' and stat.S_ISREG(
                st.st_mode):
            return self._read_qcow2_header(path)
        return None

    def _read_qcow2_header(self, path):
        fd, st = _open_regular(path)
        if fd is None:
            return None
        try:
            header = qcow2.read(fd)
        except qcow2.Unsupported as e:
            LOG.debug('qemu-img inspects %s: %s', path, e)
            return None
        except OSError as e:
            raise InspectError(path, e.strerror or str(e))
        finally:
            os.close(fd)
        self.header_reads += 1
        info = DiskInfo(path, 'qcow2', header.backing_file,
                        header.backing_format)
        self._remember(st, info, inspect_cache.HEADER)
        return info

    def _remember(self, st, info, method):
        if self.cache is not None:
            self.cache.store(st, info.format, method, info.backing_file,
                             info.backing_format, info.data_file)

    def _ask_qemu_img(self, path, fmt, st):
        """Run qemu-img info on ``path``; the answer is kept under ``st``.

        ``st`` is taken before the call: a disk written meanwhile has
        another stat by the next pass, which then asks again.
        """
        with _any_error_as_inspect_error(path):
            out = self._run(path, fmt)
            if len(out) > MAX_OUTPUT_BYTES:
                raise InspectError(
                    path, 'qemu-img info printed %d bytes, more than the '
                    '%d accepted' % (len(out), MAX_OUTPUT_BYTES))
            info = self._parse(path, fmt, out)
            self._remember(st, info, inspect_cache.QEMU_IMG)
            return info

    @staticmethod
    def _parse(path, fmt, out):
        try:
            info = imageutils.QemuImgInfo(out, format='json')
        except (ValueError, AttributeError, TypeError):
            raise InspectError(
                path, 'qemu-img info printed no valid JSON: %r' % out[:80])
        if info.file_format != fmt:
            raise InspectError(
                path, 'qemu-img info reported format %r for a disk read '
                'as %r' % (info.file_format, fmt))
        data_file = _data_file(info.format_specific)
        for value in (info.backing_file, info.backing_file_format,
                      data_file):
            if value is not None and not isinstance(value, str):
                raise InspectError(
                    path, 'qemu-img info printed a backing or data file '
                    'that is not a string: %r' % (value,))
            if value is not None and '\0' in value:
                # No file name holds one; os.stat would refuse it.
                raise InspectError(
                    path, 'qemu-img info printed a backing or data file '
                    'name with a NUL byte: %r' % value)
        return DiskInfo(path=path, format=fmt,
                        backing_file=info.backing_file or None,
                        backing_format=info.backing_file_format or None,
                        data_file=data_file or None)

    def detect_format(self, path):
        """Return the format of ``path`` from a bounded read of its start.

        Only a regular file is read (a FIFO is never waited on), and the
        answer is kept under the stat of what was read. Raises
        InspectError when the file cannot be read or the content matches
        more than one format.
        """
        fd, st = _open_regular(path)
        if fd is None:
            raise InspectError(path, 'not a regular file')
        try:
            if self.cache is not None:
                fmt = self.cache.lookup_format(st, DETECTOR)
                if fmt is not None:
                    self.detection_cache_hits += 1
                    return fmt
            self.format_detections += 1
            with open(fd, 'rb', closefd=False) as source:
                fmt = self._detect(source)
            if self.cache is not None:
                self.cache.store_format(st, DETECTOR, fmt)
            return fmt
        except InspectError:
            raise
        except OSError as e:
            raise InspectError(path, e.strerror or str(e))
        except Exception as e:
            raise InspectError(path, 'cannot detect the format: %s' % e)
        finally:
            os.close(fd)

    def _detect(self, source):
        """Return the format of the disk open as ``source``, at offset 0."""
        head = source.read(_DETECT_CHUNK)
        if _MAGIC_KNOWS_ALL:
            candidates = _candidates(head)
            if not candidates:
                return 'raw'
            if candidates == {'qcow2'} and len(head) >= _SECTOR:
                # nova's overlays, the disks detected most: their inspector
                # would only check the same.
                return 'qcow2'
            if len(candidates) == 1:
                fmt = candidates.pop()
                if _matches(head, fmt):
                    return fmt
        self.full_detections += 1
        source.seek(0)
        return _detect_all(source)

    def inspect_many(self, requests, progress=None):
        """Inspect (path, fmt) pairs; qemu-img runs in a pool of ``workers``.

        ``path`` is absolute. Returns {path: DiskInfo or InspectError}.
        ``progress`` (a progress.PassProgress) is told each file.
        """
        if progress is None:
            progress = pass_progress.PassProgress()
        results = {}
        waiting = {}
        for path, fmt in dict(requests).items():
            progress.file(path)
            try:
                with _any_error_as_inspect_error(path):
                    st = _disk_stat(path)
                    info = self._known(path, fmt, st)
            except InspectError as e:
                results[path] = e
                continue
            if info is None:
                waiting[path] = (fmt, st)
            else:
                results[path] = info
        if not waiting:
            return results

        def ask_qemu_img(path):
            try:
                with progress.working_on(path):
                    return self._ask_qemu_img(path, *waiting[path])
            except InspectError as e:
                return e

        workers = min(self.workers, len(waiting))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            results.update(zip(waiting, pool.map(ask_qemu_img, waiting)))
        return results
