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

"""No secret of ``[coordination] backend_url`` in what cachekeeper shows.

cachekeeper-manage runs on a host whose backend URL carries every secret
its tooz driver reads, with debug logging: a pass (its coordinator fails,
to connect or to load the driver, and holds a removal back for that
reason), then ``cache status`` and ``cache status --json``. Neither what
they print nor any file they write may hold a secret. The daemon's log is
tests/system/test_daemon.py's.
"""

import json
import os

import pytest

from cachekeeper import masking
from tests.lib import hosttree
from tests.lib import tooz_urls


def written_files(root, but):
    """The text of every file under ``root`` but ``but``."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if path != but:
                with open(path, 'rb') as f:
                    yield path, f.read().decode('utf-8', 'replace')


@pytest.mark.parametrize('backend', sorted(tooz_urls.SECRET_URLS))
def test_manage_shows_no_secret_of_the_backend_url(tmp_path, backend):
    template, secrets = tooz_urls.SECRET_URLS[backend]
    host = hosttree.HostTree(tmp_path)
    # A file the pass would remove but for the backend's problem.
    host.base(hosttree.image('unused'), age=2 * hosttree.DAY)
    with tooz_urls.closed_port() as port:
        url = template.format(port=port)
        with open(host.config_file, 'a') as f:
            f.write('[DEFAULT]\ndebug = True\nmetrics_file = %s\n'
                    '[coordination]\nbackend_url = %s\n'
                    % (os.path.join(host.root, 'cachekeeper.prom'), url))
        process, report = host.run_pass()
        shown = {'cache pass': process.stdout + process.stderr}
        for argv in (['cache', 'status'], ['cache', 'status', '--json']):
            status = host.manage(*argv)
            assert status.returncode == 0, status.stderr
            shown[' '.join(argv)] = status.stdout + status.stderr

    [entry] = report['files']
    assert 'not removed: coordination unavailable: ' in entry['reason']
    assert masking.mask(url) in shown['cache status']
    assert json.loads(status.stdout)['coordination']['backend'] == (
        masking.mask(url))
    # The pass report, the metrics, the state database, the leader record.
    shown.update(written_files(host.root, but=host.config_file))
    for where, text in shown.items():
        for secret in secrets:
            assert secret not in text, where
