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

import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))
GENERATOR_CONF = os.path.join(
    ROOT, 'etc', 'cachekeeper', 'cachekeeper-config-generator.conf')
SAMPLE = os.path.join(ROOT, 'etc', 'cachekeeper', 'cachekeeper.conf.sample')


def test_sample_is_up_to_date():
    generator = os.path.join(os.path.dirname(sys.executable),
                             'oslo-config-generator')
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, 'cachekeeper.conf.sample')
        subprocess.run([generator, '--config-file', GENERATOR_CONF,
                        '--output-file', output],
                       check=True, cwd=ROOT, capture_output=True,
                       timeout=60)
        with open(output) as f:
            generated = f.read()
    with open(SAMPLE) as f:
        checked_in = f.read()
    assert generated == checked_in, (
        'etc/cachekeeper/cachekeeper.conf.sample is stale: run '
        'oslo-config-generator --config-file %s'
        % os.path.relpath(GENERATOR_CONF, ROOT))


def test_sample_lists_every_group():
    with open(SAMPLE) as f:
        sample = f.read()
    for group in ('[DEFAULT]', '[image_cache]', '[libvirt]',
                  '[scrubber]', '[glance]', '[coordination]'):
        assert group in sample
