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

"""The real qemu-img and qemu-io, to make images and to check readers.

QEMU_IMG is the one found on PATH at import, so that images are made by
the real one even while a test puts a fake qemu-img first on PATH.
"""

import os
import shutil
import subprocess

from cachekeeper.cache import inspect
from cachekeeper.cache import inspect_cache
from cachekeeper.cache import qcow2

QEMU_IMG = shutil.which('qemu-img')
QEMU_IO = shutil.which('qemu-io')

# qemu-img as the code under test runs it, to compare answers with.
QEMU_IMG_INSPECTOR = inspect.Inspector(method=inspect_cache.QEMU_IMG,
                                       timeout=30, workers=4)


def qemu_img(*args, timeout=30):
    """Run the real qemu-img with ``args``; raise if it fails."""
    subprocess.run([QEMU_IMG] + [str(a) for a in args], check=True,
                   capture_output=True, timeout=timeout)


def make_chain(base, overlay):
    """A raw base of 1 MiB and a qcow2 overlay on it, as nova makes them."""
    with open(base, 'wb') as f:
        f.truncate(1024 * 1024)
    qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, overlay)


def read_header(path):
    """(backing_file, backing_format), or None when the reader declines."""
    fd = os.open(path, os.O_RDONLY)
    try:
        header = qcow2.read(fd)
    except qcow2.Unsupported:
        return None
    finally:
        os.close(fd)
    return header.backing_file, header.backing_format


def assert_reader_agrees_with_qemu_img(root):
    """Cross-check every qcow2 image under ``root``; return how many."""
    images = []
    for directory, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, 'rb') as f:
                    if f.read(4) == qcow2.MAGIC:
                        images.append(path)
    read = {path: read_header(path) for path in images}
    answers = QEMU_IMG_INSPECTOR.inspect_many(
        (path, 'qcow2') for path, found in read.items() if found)
    for path, answer in answers.items():
        assert not isinstance(answer, inspect.InspectError), answer
        assert read[path] == (answer.backing_file, answer.backing_format)
    return len(images)
