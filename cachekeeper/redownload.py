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

"""Originals the scrub queue deleted, downloaded again from Glance.

Once an entry is drained its file is gone from this host, but an original
is a copy of a Glance image: ``scrub restore`` downloads it again through
the verified precache path (glance.downloads.Precacher), as nova would
fetch it. nova names an original after the sha1 of its image id, which
cannot be turned back into the id; the id is the one nova's metadata named
for it (kept in the ledger after the instances are gone), or is found
among ``[image_cache] pinned_images`` and the images Glance lists.
"""

from cachekeeper.cache import facts
from cachekeeper.cache import names
from cachekeeper.glance import catalog
from cachekeeper.glance import client as glance_client
from cachekeeper.glance import downloads
from cachekeeper.scrub import entries


class CannotDownloadAgain(entries.ScrubError):
    """A drained entry cannot be downloaded again; one line says why."""


def _named(name, image_ids):
    """The one of ``image_ids`` whose original nova names ``name``, or None."""
    return next((image_id for image_id in image_ids
                 if names.image_cache_name(image_id) == name), None)


def image_id_of(name, client, known_ids=()):
    """The id of the image whose original is named ``name``, or None.

    ``known_ids`` are ids known without asking Glance, tried first. Raises
    one of glance.client.SERVICE_ERRORS when Glance cannot list its images.
    """
    return (_named(name, known_ids) or
            _named(name, catalog.list_images(client, None).image_ids))


def download_again(conf, entry, known_id=None):
    """Download the original of drained ``entry`` again.

    ``known_id`` is the image id the ledger kept for it, if any.

    Returns the downloads.PrecacheResult: an image nova fetched again
    meanwhile is only verified and touched. Raises CannotDownloadAgain
    when the file is no original, Glance is not configured or does not
    know its image, or the download fails.
    """
    gone = 'entry %d was drained: %s is deleted' % (entry.id, entry.path)
    if entry.kind != facts.ORIGINAL:
        raise CannotDownloadAgain(
            '%s, and only an original image can be downloaded again; nova '
            'makes %s files itself when it needs them' % (gone, entry.kind))
    if not glance_client.is_configured(conf):
        raise CannotDownloadAgain(
            '%s, and it cannot be downloaded again: Glance is not '
            'configured ([glance] endpoint_override or [glance] auth_type)'
            % gone)
    client = glance_client.make_client(conf)
    try:
        known_ids = [known_id] if known_id else []
        image_id = image_id_of(entry.name, client,
                               known_ids + conf.image_cache.pinned_images)
    except glance_client.SERVICE_ERRORS as e:
        raise CannotDownloadAgain(
            '%s, and its image id cannot be looked up: Glance cannot list '
            'its images: %s' % (gone, glance_client.error_text(e)))
    if image_id is None:
        raise CannotDownloadAgain(
            '%s, and it cannot be downloaded again: its image id is '
            'unknown, no image Glance lists is cached under that name' % gone)
    try:
        return downloads.Precacher.from_conf(conf, client).precache(image_id)
    except downloads.PrecacheError as e:
        raise CannotDownloadAgain('cannot download entry %d (image %s) '
                                  'again: %s' % (entry.id, image_id, e))
