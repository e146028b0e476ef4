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

"""The image cache file by file, for cachekeeper-manage cache list.

One row per cache file, as plain values: which Glance image it holds and
its name (from nova's metadata, else the ledger, which remembers what the
metadata said, else a pin by image id; the name from Glance's listing
when Glance is used), its bytes, the instances using it, when a pass last
saw it in use, the verdict of the last pass and when it may be removed.
The JSON of ``cache list`` is these rows, each with report.SCHEMA_VERSION.
"""

import os

from cachekeeper.cache import facts
from cachekeeper.cache import names
from cachekeeper import report

# The keys of a row, in the order the JSON lists them.
KEYS = ('schema_version', 'name', 'kind', 'image_id', 'image_name',
        'apparent_bytes', 'allocated_bytes', 'users', 'last_used',
        'verdict', 'current_verdict', 'removable_at', 'pinned_until',
        'pin_reason')


def rows(decisions, policy, catalog, history, last_pass):
    """One row (a dict of KEYS) per Decision of a fresh evaluation.

    ``policy`` is the pass's facts.Policy (its pins), ``catalog`` the
    facts.ImageCatalog or None, ``history`` the ledger's {name:
    LedgerEntry}, ``last_pass`` the last pass report as a dict or None.
    """
    verdicts = {} if last_pass is None else {
        f['path']: f['verdict'] for f in last_pass['files']}
    image_names = {} if catalog is None else catalog.image_names
    # nova names an original after the sha1 of its image id.
    listed = {names.image_cache_name(image_id): image_id
              for image_id in image_names}
    return [_row(d, policy, image_names, listed, history, verdicts)
            for d in decisions]


def _row(decision, policy, image_names, listed, history, verdicts):
    base_file = decision.base_file
    pin = _pin_of(base_file, policy)
    image_id = image_of(base_file, decision.references, history,
                        listed) or (None if pin is None else pin.image_id)
    entry = history.get(base_file.name)
    regular = base_file.is_regular
    return {
        'schema_version': report.SCHEMA_VERSION,
        'name': base_file.name,
        'kind': base_file.kind,
        'image_id': image_id,
        'image_name': image_names.get(image_id),
        'apparent_bytes': base_file.size if regular else None,
        'allocated_bytes': base_file.allocated if regular else None,
        'users': sorted({_user(r.source) for r in decision.references}),
        'last_used': None if entry is None else entry.last_seen_in_use,
        'verdict': verdicts.get(base_file.path),
        'current_verdict': decision.verdict,
        'removable_at': _removable_at(decision, policy, pin),
        'pinned_until': None if pin is None else pin.expires_at,
        'pin_reason': None if pin is None else pin.reason,
    }


def image_of(base_file, references, history, listed):
    """The Glance image id of a cache file, None when none is known.

    nova's metadata of the instances using it, else what the ledger kept
    of it, else the image Glance lists under its name (``listed``: {cache
    name: image id}), for the file or (a resized copy) for its original.
    """
    for reference in references:
        if reference.image_id:
            return reference.image_id
    if base_file.kind not in (facts.ORIGINAL,) + names.IMAGE_VARIANT_KINDS:
        return None
    candidates = (base_file.name, names.original_of(base_file.name))
    for name in candidates:
        entry = history.get(name)
        if entry is not None and entry.image_id:
            return entry.image_id
    return next((listed[name] for name in candidates if name in listed),
                None)


def _user(source):
    """The instance a reference comes from: its directory, or the domain."""
    if os.path.isabs(source):
        return os.path.basename(os.path.dirname(source))
    return source


def _pin_of(base_file, policy):
    pins = policy.pins_by_name
    pin = pins.get(base_file.name)
    if pin is None and base_file.kind in names.IMAGE_VARIANT_KINDS:
        pin = pins.get(names.original_of(base_file.name))
    return pin


def _removable_at(decision, policy, pin):
    """When a pass may remove the file, as things are; None for never.

    A file in use, kept or ignored has no such time; a file an operator
    pinned for a while may go once the pin ends and it is old enough.
    """
    base_file = decision.base_file
    if decision.verdict in (facts.TOO_YOUNG, facts.REMOVABLE):
        return base_file.mtime + decision.min_age
    if (decision.verdict == facts.PINNED and pin is not None and
            pin.expires_at is not None and policy.remove_unused and
            policy.min_age(base_file.kind) is not None):
        return max(pin.expires_at,
                   base_file.mtime + policy.min_age(base_file.kind))
    return None


def matches(row, kind=None, unused=False, image_id=None):
    """Whether a row passes the filters of cache list."""
    return ((kind is None or row['kind'] == kind) and
            (not unused or not row['users']) and
            (image_id is None or row['image_id'] == image_id))
