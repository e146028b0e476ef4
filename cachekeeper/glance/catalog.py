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

"""What Glance knows: which images exist, which are pinned.

A pass asks ImageService.catalog() which images Glance still has and which
carry the pin property, and afterwards lets ImageService.precache_pinned()
download (with downloads.Precacher) the pinned images missing from the
cache. Glance is never needed for safety: when it cannot be reached, a pass
goes on as without it.
"""

import dataclasses
import os
import time

from oslo_log import log as logging

from cachekeeper.cache import facts
from cachekeeper.cache import names
from cachekeeper.glance import client as glance_client
from cachekeeper.glance import downloads
from cachekeeper import progress as pass_progress

LOG = logging.getLogger(__name__)

# Glance caps a page at its api_limit_max, 1000 by default.
LIST_PAGE_SIZE = 1000

# A pass downloads at most this many missing pinned images, so that it ends
# in reasonable time; the others follow in the next passes.
MAX_PINNED_DOWNLOADS_PER_PASS = 2


def parse_pin_property(text):
    """Return (key, value) from ``KEY=VALUE``, or None for an empty text.

    Raises ValueError when the text is not of that form.
    """
    if not text:
        return None
    key, equals, value = text.partition('=')
    if not equals or not key.strip():
        raise ValueError('must be KEY=VALUE, got %r' % text)
    return key.strip(), value.strip()


def _cache_names(image_ids):
    return frozenset(names.image_cache_name(i) for i in image_ids)


@dataclasses.dataclass(frozen=True)
class Listing:
    """The images Glance had when it was listed at ``listed_at``."""

    image_ids: frozenset
    pinned_ids: frozenset
    pin_property: str
    listed_at: float
    # {image id: name}, of the images that have a name.
    image_names: dict = dataclasses.field(default_factory=dict)


def list_images(client, pin_property, now=time.time):
    """List every image the service user can see, page by page.

    ``listed_at`` is taken before the first page: an image missing from
    the listing did not exist, or was deleted, by then.
    """
    pin = parse_pin_property(pin_property)
    listed_at = now()
    image_ids = set()
    pinned_ids = set()
    image_names = {}
    for image in client.images.list(filters={'visibility': 'all'},
                                    page_size=LIST_PAGE_SIZE):
        image_ids.add(image['id'])
        if image.get('name'):
            image_names[image['id']] = image['name']
        if pin is not None and str(
                image.get(pin[0], '')).lower() == pin[1].lower():
            pinned_ids.add(image['id'])
    return Listing(frozenset(image_ids), frozenset(pinned_ids), pin_property,
                   listed_at, image_names)


class ImageService:
    """Glance as the passes see it.

    Keeps the last listing for ``[glance] image_list_ttl`` seconds, says
    once when Glance goes away and once when it is back, and logs each
    pinned image's download failure once. Nothing here raises into a pass.
    """

    def __init__(self, conf, now=time.time):
        self.conf = conf
        self._now = now
        self._client = None
        self._listing = None
        self._first_seen = {}
        self._available = None
        self._download_failures = set()

    @property
    def configured(self):
        return glance_client.is_configured(self.conf)

    def client(self):
        if self._client is None:
            self._client = glance_client.make_client(self.conf)
        return self._client

    def catalog(self, cache_names):
        """Return the ImageCatalog for a pass; None if Glance is unused.

        ``cache_names`` are the names the pass found in the cache.
        """
        if not self.configured:
            return None
        now = self._now()
        # Only a file in the cache before a listing was taken can be said
        # to be missing from it: a younger one may hold an image created
        # after the listing. mtime cannot tell, since touches move it.
        self._first_seen = {name: self._first_seen.get(name, now)
                            for name in cache_names}
        opts = self.conf.glance
        listing = self._listing
        age = None if listing is None else now - listing.listed_at
        if (age is None or not 0 <= age < opts.image_list_ttl or
                listing.pin_property != opts.pin_property):
            listing = self._list(opts.pin_property)
        if listing is None:
            # Unknown or stale: nothing counts as deleted, and the pins
            # last seen still hold.
            last = self._listing
            return facts.ImageCatalog(
                pinned_names=(frozenset() if last is None
                              else _cache_names(last.pinned_ids)),
                pin_property=opts.pin_property,
                image_names={} if last is None else last.image_names)
        existing = _cache_names(listing.image_ids)
        return facts.ImageCatalog(
            deleted_names=frozenset(
                name for name, seen in self._first_seen.items()
                if seen <= listing.listed_at and name not in existing),
            listed_at=listing.listed_at,
            pinned_names=_cache_names(listing.pinned_ids),
            pin_property=opts.pin_property,
            image_names=listing.image_names)

    def _list(self, pin_property):
        """A fresh Listing, or None when Glance cannot give one."""
        try:
            listing = list_images(self.client(), pin_property, self._now)
        except Exception as e:
            if not isinstance(e, glance_client.SERVICE_ERRORS):
                LOG.debug('Unexpected error listing images', exc_info=True)
            self._went_away(glance_client.error_text(e))
            return None
        if self._available is False:
            LOG.info('Glance is available again: %d images listed',
                     len(listing.image_ids))
        self._available = True
        self._listing = listing
        return listing

    def _went_away(self, reason):
        if self._available is not False:
            LOG.warning('Glance is unavailable; until it is back, no image '
                        'counts as deleted in Glance, pins by image property '
                        'are those last listed, and no pinned image is '
                        'downloaded: %s', reason)
        self._available = False

    def pinned_image_ids(self):
        """Image ids pinned by configuration or by the last listing."""
        pinned = {i.strip() for i in self.conf.image_cache.pinned_images
                  if i.strip()}
        if self._listing is not None:
            pinned.update(self._listing.pinned_ids)
        return pinned

    def precache_pinned(self, present_names, stop_event=None,
                        progress=None, operator_pinned=()):
        """Download pinned images whose cache file is not in the cache.

        ``present_names`` are the names in the cache; ``operator_pinned``
        the image ids of the pins of cachekeeper-manage cache pin. At most
        MAX_PINNED_DOWNLOADS_PER_PASS downloads, images that failed before
        last. ``progress`` (a progress.PassProgress) is told each file and
        each part of it downloaded. Returns the PrecacheResults; never
        raises.
        """
        if progress is None:
            progress = pass_progress.PassProgress()
        if not self.configured or not self._available:
            return []
        pinned = self.pinned_image_ids() | set(operator_pinned)
        self._download_failures &= pinned
        missing = sorted(
            (i for i in pinned
             if names.image_cache_name(i) not in present_names),
            key=lambda i: (i in self._download_failures, i))
        results = []
        if not missing:
            return results
        precacher = downloads.Precacher.from_conf(self.conf, self.client())
        for image_id in missing[:MAX_PINNED_DOWNLOADS_PER_PASS]:
            if stop_event is not None and stop_event.is_set():
                break
            progress.file(os.path.join(precacher.cache_dir,
                                       names.image_cache_name(image_id)))
            try:
                # A long download is no stalled pass while bytes arrive.
                results.append(precacher.precache(
                    image_id, stop_event=stop_event,
                    progress=lambda _done, _total: progress.moved()))
            except Exception as e:
                if not isinstance(e, downloads.PrecacheError):
                    LOG.exception('Unexpected error precaching pinned '
                                  'image %s', image_id)
                # Once per image: the next messages may differ only in
                # numbers (bytes, seconds).
                if image_id not in self._download_failures:
                    LOG.warning('Cannot cache pinned image %s: %s',
                                image_id, e)
                self._download_failures.add(image_id)
            else:
                if image_id in self._download_failures:
                    self._download_failures.discard(image_id)
                    LOG.info('Pinned image %s is cached now', image_id)
        return results
