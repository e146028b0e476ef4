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

"""Small files: read without waiting on them, and JSON replaced whole.

Metadata files in instance directories and nova's files in instances_path
are read with read(): anyone who can write there can put a FIFO or a huge
file in their place. The pass report, nova's storage registry and the
leader record are written with replace_json(), which a reader sees as the
old file or the new one: the new file is written under a temporary name in
the same directory and renamed over the old one; a writer that dies leaves
the temporary file, which its owner cleans up (see
cachekeeper.cache.residue and cachekeeper.cache.registry).
"""

import contextlib
import json
import os
import stat
import tempfile

NEW_FILE_MODE = 0o644


def replace_json(path, document, temporary_prefix):
    """Replace ``path`` with ``document`` as JSON, atomically and durably.

    The new file gets the owner, group and mode of the one it replaces (or
    the owner and group of its directory, and mode 0644, when there was
    none): a file cachekeeper rewrites among nova's stays nova's to write.
    """
    directory = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=temporary_prefix)
    try:
        try:
            current = os.stat(path)
            mode = stat.S_IMODE(current.st_mode)
        except FileNotFoundError:
            current = os.stat(directory)
            mode = NEW_FILE_MODE
        created = os.fstat(fd)
        if (created.st_uid, created.st_gid) != (current.st_uid,
                                                current.st_gid):
            os.fchown(fd, current.st_uid, current.st_gid)
        os.fchmod(fd, mode)
        with open(fd, 'w', closefd=False) as f:
            # One string: json.dumps encodes in C, json.dump in Python,
            # three times slower for a report on thousands of files.
            f.write(json.dumps(document, separators=(',', ':')))
        os.fsync(fd)
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    finally:
        os.close(fd)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# Each read of a file that grows after its stat reads at least this much.
_MIN_READ = 4096


def read(path, max_bytes):
    """Return the content of the small regular file ``path``, as bytes.

    A FIFO or device where the file belongs is refused without waiting on
    it, and so is content longer than ``max_bytes``: both raise
    ValueError. Raises OSError (FileNotFoundError when there is no file)
    when the file cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError('not a regular file')
        # Reads of the size the file has (and a byte more, to see it grew),
        # not of max_bytes: a buffer of max_bytes for each of thousands of
        # files of a few KiB costs more than reading them.
        chunks = []
        remaining = max_bytes + 1
        size = max(st.st_size + 1, _MIN_READ)
        while remaining > 0:
            chunk = os.read(fd, min(remaining, size))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b''.join(chunks)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ValueError('larger than %d bytes' % max_bytes)
    return data
