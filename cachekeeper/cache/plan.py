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

"""The rules of the image cache: one verdict per cache file.

Everything here is a pure function of its arguments. The scan, the
inventory and the clock are read by the caller, so every rule can be tested
with plain values and a pass can be explained after the fact.
"""

import dataclasses

from cachekeeper.cache import facts
from cachekeeper.cache import names
from cachekeeper import fmt

DELETED_IN_GLANCE = 'image deleted in Glance'


def policy_from_conf(conf):
    """Build the Policy of a pass from the [image_cache] options."""
    opts = conf.image_cache
    original_min_age = opts.remove_unused_original_minimum_age_seconds
    swap_min_age = opts.remove_unused_swap_minimum_age_seconds
    ephemeral_min_age = opts.remove_unused_ephemeral_minimum_age_seconds
    return facts.Policy(
        remove_unused=opts.remove_unused_base_images,
        original_min_age=original_min_age,
        resized_min_age=opts.remove_unused_resized_minimum_age_seconds,
        swap_min_age=(original_min_age if swap_min_age is None
                      else swap_min_age),
        ephemeral_min_age=(original_min_age if ephemeral_min_age is None
                           else ephemeral_min_age),
        pinned_names=frozenset(names.image_cache_name(image_id)
                               for image_id in opts.pinned_images
                               if image_id),
        deleted_image_min_age=(
            opts.remove_deleted_image_minimum_age_seconds),
        residue_min_age=opts.residue_minimum_age_seconds)


def references_reason(references):
    """Say why a file is in use, from the evidence for it."""
    first = references[0]
    text = first.reason or 'used by %s' % first.source
    return _with_more(text, len(references) - 1)


def doubts_reason(doubts):
    """Say why a file that may be unused is kept, from what was unread."""
    first = doubts[0]
    text = 'not removed: %s could not be read: %s' % (first.source,
                                                      first.message)
    return _with_more(text, len(doubts) - 1)


def _with_more(text, more):
    return '%s (+%d more)' % (text, more) if more else text


def _foreign_reason(base_file):
    what = ('unrecognised name' if base_file.is_regular
            else base_file.file_type)
    return '%s; never removed' % what


def deleted_in_glance(base_file, catalog):
    """Whether ``base_file`` caches an image Glance no longer has.

    Only an original is named after its image.
    """
    return (catalog is not None and
            base_file.kind == facts.ORIGINAL and
            base_file.name in catalog.deleted_names)


def _operator_pin_reason(name, kind, policy, now):
    """Why an operator's pin (cache pin) keeps ``name`` now, or None."""
    if not policy.pins:
        return None
    pins = policy.pins_by_name
    pin = pins.get(name)
    copy_of = None
    if pin is None and kind in names.IMAGE_VARIANT_KINDS:
        copy_of = names.original_of(name)
        pin = pins.get(copy_of)
    if pin is None or not pin.holds_at(now):
        return None
    reason = 'pinned by cachekeeper-manage cache pin %s' % (
        'until %s' % fmt.utc(pin.expires_at) if pin.expires_at is not None
        else 'without end')
    if pin.reason:
        reason += ': %s' % pin.reason
    return reason if copy_of is None else 'copy of %s, %s' % (copy_of,
                                                              reason)


def _pinned_reason(name, kind, policy, catalog, now):
    operator_reason = _operator_pin_reason(name, kind, policy, now)
    if operator_reason:
        return operator_reason
    if not policy.pinned_names and (catalog is None or
                                    not catalog.pinned_names):
        return None
    pins = [(policy.pinned_names, 'pinned by [image_cache] pinned_images')]
    if catalog is not None:
        pins.append((catalog.pinned_names,
                     'pinned by its Glance image property %s'
                     % catalog.pin_property))
    for pinned_names, reason in pins:
        if name in pinned_names:
            return reason
        if (kind in names.IMAGE_VARIANT_KINDS and
                names.original_of(name) in pinned_names):
            return 'copy of %s, %s' % (names.original_of(name), reason)
    return None


def _too_young_reason(age, min_age):
    if age < 0:
        return ('unused, modification time %s in the future (minimum age '
                '%s)' % (fmt.duration(-age), fmt.duration(min_age)))
    return 'unused, %s of %s' % (fmt.duration(age),
                                 fmt.duration(min_age))


def decide(base_file, usage, policy, now, catalog=None):
    """Return the Decision for one cache file.

    The first rule that applies wins: foreign entries are ignored, download
    residue is decided by _residue_decision, referenced files are in use,
    pinned files (by an operator's pin until it expires, by configuration
    or by Glance image property) are pinned; then, if removal is enabled,
    files younger than their kind's minimum age (or with an mtime in the
    future) are too young, files the inventory has doubts about are kept,
    and the rest are removable. An
    original whose image Glance no longer has (``catalog``, an ImageCatalog
    or None) ages with the deleted images' minimum age instead of its
    kind's.
    """
    name = base_file.name
    kind = base_file.kind
    age = now - base_file.mtime

    def decision(verdict, reason, min_age=None, references=()):
        # Positional: a pass makes one per cache file, and keywords would
        # double the cost of making it.
        return facts.Decision(base_file, verdict, reason, age, min_age,
                              references)

    if kind == facts.FOREIGN:
        return decision(facts.IGNORED, _foreign_reason(base_file))
    if kind == facts.RESIDUE:
        return _residue_decision(base_file, usage, policy, age, decision)
    deleted = deleted_in_glance(base_file, catalog)
    references = tuple(usage.references_to(name))
    if references:
        reason = references_reason(references)
        if deleted:
            reason += '; its image no longer exists in Glance'
        return decision(facts.IN_USE, reason, references=references)
    pinned_reason = _pinned_reason(name, kind, policy, catalog, now)
    if pinned_reason:
        return decision(facts.PINNED, pinned_reason)
    if not policy.remove_unused:
        return decision(facts.KEPT, 'removal disabled by [image_cache] '
                                    'remove_unused_base_images')
    min_age = policy.min_age(kind)
    prefix = ''
    if deleted:
        if policy.deleted_image_min_age is not None:
            min_age = policy.deleted_image_min_age
        prefix = DELETED_IN_GLANCE + '; '
    if age < min_age:
        return decision(facts.TOO_YOUNG,
                        prefix + _too_young_reason(age, min_age),
                        min_age=min_age)
    doubts = usage.doubts_about(name)
    if doubts:
        return decision(facts.KEPT, doubts_reason(doubts), min_age=min_age)
    return decision(facts.REMOVABLE,
                    prefix + 'unused for %s (minimum %s)' % (
                        fmt.duration(age), fmt.duration(min_age)),
                    min_age=min_age)


def _residue_decision(base_file, usage, policy, age, decision):
    """Decide about download residue; ``decision`` makes the Decision.

    Residue is removable once unmodified for the residue minimum age: a
    download still running writes to it (and holds nova's lock, which
    execute checks). Files that are not a download's are never removed,
    and the rules that keep any other file keep residue too.
    """
    min_age = policy.residue_min_age
    if min_age is None:
        return decision(facts.KEPT, 'download residue; not removed')
    if names.download_target(base_file.name) is None:
        return decision(facts.KEPT, 'temporary file, not a download of nova '
                                    'or cachekeeper; never removed')
    references = tuple(usage.references_to(base_file.name))
    if references:
        return decision(facts.KEPT, 'download residue, but %s; not removed'
                        % references_reason(references))
    if not policy.remove_unused:
        return decision(facts.KEPT, 'removal disabled by [image_cache] '
                                    'remove_unused_base_images')
    if age < min_age:
        return decision(facts.KEPT, 'download residue written %s ago; '
                                    'removed once unmodified for %s' % (
                                        fmt.duration(max(age, 0)),
                                        fmt.duration(min_age)),
                        min_age=min_age)
    doubts = usage.doubts_about(base_file.name)
    if doubts:
        return decision(facts.KEPT, doubts_reason(doubts), min_age=min_age)
    return decision(facts.REMOVABLE,
                    'download residue unmodified for %s (minimum %s)' % (
                        fmt.duration(age), fmt.duration(min_age)),
                    min_age=min_age)


def plan(base_files, usage, policy, now, catalog=None):
    """Return one Decision per BaseFile, in the same order.

    ``now`` is the wall-clock time (seconds since the epoch) the ages are
    measured at; ``catalog`` is what Glance said (an ImageCatalog), or None
    when Glance is not used.
    """
    return [decide(base_file, usage, policy, now, catalog)
            for base_file in base_files]


def hold_removals(decisions, reason):
    """Keep the files ``decisions`` would remove, because of ``reason``.

    ``reason`` says why this host may not remove this pass (it is not the
    leader of a shared cache, coordination is unavailable). Returns the new
    decisions and the names of the files held back, which were found
    unused all the same.
    """
    held = []
    result = []
    for decision in decisions:
        if decision.verdict == facts.REMOVABLE:
            decision = dataclasses.replace(
                decision, verdict=facts.KEPT,
                reason='%s; not removed: %s' % (decision.reason, reason))
            held.append(decision.base_file.name)
        result.append(decision)
    return result, tuple(held)
