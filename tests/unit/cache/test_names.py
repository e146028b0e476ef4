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

"""nova's file names: the cache files nova metadata points to, and the
residue of a download."""

from cachekeeper.cache import metadata
from cachekeeper.cache import names
from tests.lib import nova

IMAGE_ID = nova.IMAGE_ID
IMAGE_SHA1 = nova.IMAGE_SHA1


def test_cache_names_for_root_image_and_variants():
    cached = {IMAGE_SHA1, IMAGE_SHA1 + '_sm', IMAGE_SHA1 + '_5368709120',
              IMAGE_SHA1 + '_x', IMAGE_SHA1 + '.part', '1' * 40}
    nova_metadata = metadata.NovaMetadata(root_image=IMAGE_ID)
    assert list(names.cache_names_for(nova_metadata, cached)) == [
        (IMAGE_SHA1, 'root image ' + IMAGE_ID),
        (IMAGE_SHA1 + '_5368709120', 'root image ' + IMAGE_ID),
        (IMAGE_SHA1 + '_sm', 'root image ' + IMAGE_ID),
    ]


def test_cache_names_for_original_even_when_not_cached():
    nova_metadata = metadata.NovaMetadata(root_image=IMAGE_ID)
    assert [name for name, _reason in
            names.cache_names_for(nova_metadata, set())] == [IMAGE_SHA1]


def test_cache_names_for_swap_and_ephemeral():
    cached = {'swap_512', 'swap_1024', 'ephemeral_1_0706d66',
              'ephemeral_1_40d1d2c', 'ephemeral_10_0706d66'}
    nova_metadata = metadata.NovaMetadata(swap_mb=512, ephemeral_gb=1)
    assert list(names.cache_names_for(nova_metadata, cached)) == [
        ('swap_512', 'flavor swap of 512 MiB'),
        ('ephemeral_1_0706d66', 'flavor ephemeral disk of 1 GiB'),
        ('ephemeral_1_40d1d2c', 'flavor ephemeral disk of 1 GiB'),
    ]
    assert list(names.cache_names_for(metadata.NovaMetadata(),
                                      cached)) == []


def test_cache_names_index_matches_nova_patterns_only():
    cached = names.CacheNames([
        IMAGE_SHA1, IMAGE_SHA1 + '_sm', IMAGE_SHA1 + '_10', IMAGE_SHA1 + '_',
        IMAGE_SHA1 + '_1a', IMAGE_SHA1 + '_\u0661', 'x' + IMAGE_SHA1 + '_2',
        'ephemeral_1_0706d66', 'ephemeral_1_', 'ephemeral_1',
        'ephemeral_01_0706d66', 'ephemeral_10_0706d66', 'ephemeral__x'])
    assert cached.variants == {IMAGE_SHA1: [IMAGE_SHA1 + '_10',
                                            IMAGE_SHA1 + '_sm']}
    nova_metadata = metadata.NovaMetadata(ephemeral_gb=1)
    assert [name for name, _reason in names.cache_names_for(
        nova_metadata, cached)] == ['ephemeral_1_', 'ephemeral_1_0706d66']
    assert IMAGE_SHA1 in cached and 'swap_1' not in cached


def test_download_target():
    assert names.download_target(IMAGE_SHA1 + '.part') == IMAGE_SHA1
    assert names.download_target(IMAGE_SHA1 + '.converted') == IMAGE_SHA1
    assert names.download_target(IMAGE_SHA1 + '.part.part') == (
        IMAGE_SHA1 + '.part')
    for name in ('.part', IMAGE_SHA1 + '.tmp', IMAGE_SHA1, 'disk.info.tmp'):
        assert names.download_target(name) is None, name
