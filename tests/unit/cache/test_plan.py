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

from oslo_config import cfg
import pytest

from cachekeeper.cache import facts
from cachekeeper.cache import names
from cachekeeper.cache import plan
from cachekeeper.conf import image_cache

NOW = 1800000000.0
HOUR = 3600
DAY = 86400

IMAGE = names.image_cache_name('11111111-1111-1111-1111-111111111111')
OTHER = names.image_cache_name('22222222-2222-2222-2222-222222222222')

POLICY = facts.Policy(remove_unused=True,
                      original_min_age=DAY,
                      resized_min_age=HOUR,
                      swap_min_age=2 * HOUR,
                      ephemeral_min_age=3 * HOUR)


def base_file(name, kind, age=10 * DAY, file_type='file'):
    return facts.BaseFile(name=name, path='/instances/_base/' + name,
                          kind=kind, file_type=file_type, size=1024,
                          allocated=4096, mtime=NOW - age, dev=1, ino=2)


def usage(references=(), doubts=()):
    result = facts.Usage()
    for reference in references:
        result.add_reference(reference)
    for doubt in doubts:
        result.add_doubt(doubt)
    return result


def reference(name, source='/instances/uuid-1/disk', reason=''):
    return facts.Reference(name=name, source=source, reason=reason)


def policy(**changes):
    values = dict(remove_unused=POLICY.remove_unused,
                  original_min_age=POLICY.original_min_age,
                  resized_min_age=POLICY.resized_min_age,
                  swap_min_age=POLICY.swap_min_age,
                  ephemeral_min_age=POLICY.ephemeral_min_age,
                  pinned_names=POLICY.pinned_names)
    values.update(changes)
    return facts.Policy(**values)


def assert_decision(decision, verdict, reason):
    assert (decision.verdict, decision.reason) == (verdict, reason)


@pytest.mark.parametrize('name, file_type, reason', [
    (IMAGE, 'symlink', 'symlink; never removed'),
    ('subdir', 'directory', 'directory; never removed'),
    ('pipe', 'fifo', 'fifo; never removed'),
    ('notes.txt', 'file', 'unrecognised name; never removed')])
def test_foreign_entries_are_ignored_and_say_what_they_are(name, file_type,
                                                           reason):
    entry = base_file(name, facts.FOREIGN, file_type=file_type)
    # Even a reference to the name does not make it usable.
    found = usage(references=[reference(name)])
    decision = plan.decide(entry, found, POLICY, NOW)
    assert_decision(decision, facts.IGNORED, reason)
    assert decision.references == ()


@pytest.mark.parametrize('label, found, rules', [
    ('old', usage(), POLICY),
    ('referenced', usage(references=[reference(IMAGE + '.part')]),
     POLICY),
    ('pinned', usage(), policy(pinned_names=frozenset([IMAGE]))),
    ('doubt', usage(doubts=[facts.Doubt('/x', 'gone')]), POLICY)])
def test_residue_is_kept_whatever_else_holds(label, found, rules):
    entry = base_file(IMAGE + '.part', facts.RESIDUE, age=100 * DAY)
    decision = plan.decide(entry, found, rules, NOW)
    assert_decision(decision, facts.KEPT,
                    'download residue; not removed')


@pytest.mark.parametrize('label, entry, rules', [
    ('old', base_file(IMAGE, facts.ORIGINAL), POLICY),
    ('young', base_file(IMAGE, facts.ORIGINAL, age=1), POLICY),
    ('future mtime', base_file(IMAGE, facts.ORIGINAL, age=-HOUR),
     POLICY),
    ('pinned', base_file(IMAGE, facts.ORIGINAL),
     policy(pinned_names=frozenset([IMAGE]))),
    ('removal disabled', base_file(IMAGE, facts.ORIGINAL),
     policy(remove_unused=False))])
def test_referenced_file_is_in_use_whatever_else_holds(label, entry, rules):
    refs = [reference(IMAGE, '/instances/a/disk', 'backing file of '
                      '/instances/a/disk')]
    found = usage(references=refs,
                  doubts=[facts.Doubt('/instances/b/disk', 'timeout')])
    decision = plan.decide(entry, found, rules, NOW)
    assert_decision(decision, facts.IN_USE,
                    'backing file of /instances/a/disk')
    assert tuple(refs) == decision.references


def test_in_use_reason_counts_further_references():
    refs = [reference(IMAGE, '/instances/a/disk', 'backing file of a'),
            reference(IMAGE, '/instances/b/disk', 'backing file of b'),
            reference(IMAGE, '/instances/c/disk', 'backing file of c')]
    decision = plan.decide(base_file(IMAGE, facts.ORIGINAL),
                           usage(references=refs), POLICY, NOW)
    assert_decision(decision, facts.IN_USE,
                    'backing file of a (+2 more)')
    assert tuple(refs) == decision.references


def test_in_use_reason_falls_back_to_the_source():
    decision = plan.decide(
        base_file(IMAGE, facts.ORIGINAL),
        usage(references=[reference(IMAGE, '/instances/a/libvirt.xml')]),
        POLICY, NOW)
    assert_decision(decision, facts.IN_USE,
                    'used by /instances/a/libvirt.xml')


def test_reference_to_another_name_does_not_count():
    decision = plan.decide(base_file(IMAGE, facts.ORIGINAL),
                           usage(references=[reference(OTHER)]),
                           POLICY, NOW)
    assert decision.verdict == facts.REMOVABLE


PINNED_EXACT = 'pinned by [image_cache] pinned_images'
PINNED_VARIANT = 'copy of %s, pinned by [image_cache] pinned_images' % IMAGE


@pytest.mark.parametrize('name, kind, reason', [
    (IMAGE, facts.ORIGINAL, PINNED_EXACT),
    (IMAGE + '_10737418240', facts.RESIZED, PINNED_VARIANT),
    (IMAGE + '_sm', facts.LEGACY_SM, PINNED_VARIANT)])
def test_pinned_names_and_their_variants(name, kind, reason):
    rules = policy(pinned_names=frozenset([IMAGE]))
    decision = plan.decide(base_file(name, kind), usage(), rules, NOW)
    assert_decision(decision, facts.PINNED, reason)


PIN_IMAGE = policy(pinned_names=frozenset([IMAGE]))


@pytest.mark.parametrize('label, entry, found, rules', [
    ('young', base_file(IMAGE, facts.ORIGINAL, age=1), usage(), PIN_IMAGE),
    ('future mtime', base_file(IMAGE, facts.ORIGINAL, age=-DAY), usage(),
     PIN_IMAGE),
    ('doubt', base_file(IMAGE, facts.ORIGINAL),
     usage(doubts=[facts.Doubt('/instances/a/disk', 'timeout')]),
     PIN_IMAGE),
    ('removal disabled', base_file(IMAGE, facts.ORIGINAL), usage(),
     policy(pinned_names=frozenset([IMAGE]), remove_unused=False))])
def test_pinning_wins_over_age_removal_switch_and_doubts(label, entry, found,
                                                         rules):
    decision = plan.decide(entry, found, rules, NOW)
    assert decision.verdict == facts.PINNED


@pytest.mark.parametrize('name, kind', [
    (OTHER, facts.ORIGINAL),
    (OTHER + '_10737418240', facts.RESIZED),
    ('swap_512', facts.SWAP),
    ('ephemeral_20_40d1d2c', facts.EPHEMERAL)])
def test_other_images_and_names_are_not_pinned(name, kind):
    rules = policy(pinned_names=frozenset([IMAGE]))
    decision = plan.decide(base_file(name, kind), usage(), rules,
                           NOW)
    assert decision.verdict == facts.REMOVABLE


@pytest.mark.parametrize('label, entry, found', [
    ('old', base_file(IMAGE, facts.ORIGINAL, age=100 * DAY), usage()),
    ('young', base_file(IMAGE, facts.ORIGINAL, age=1), usage()),
    ('doubt', base_file(IMAGE, facts.ORIGINAL),
     usage(doubts=[facts.Doubt('/x', 'gone')])),
    ('swap', base_file('swap_512', facts.SWAP), usage())])
def test_removal_disabled_keeps_old_young_and_doubted_files(label, entry,
                                                            found):
    rules = policy(remove_unused=False)
    reason = ('removal disabled by [image_cache] '
              'remove_unused_base_images')
    decision = plan.decide(entry, found, rules, NOW)
    assert_decision(decision, facts.KEPT, reason)


@pytest.mark.parametrize('name, kind, min_age, text', [
    (IMAGE, facts.ORIGINAL, DAY, '1d'),
    (IMAGE + '_10737418240', facts.RESIZED, HOUR, '1h'),
    (IMAGE + '_sm', facts.LEGACY_SM, HOUR, '1h'),
    ('swap_512', facts.SWAP, 2 * HOUR, '2h'),
    ('ephemeral_20_40d1d2c', facts.EPHEMERAL, 3 * HOUR, '3h')])
def test_minimum_age_per_kind_at_the_boundary(name, kind, min_age, text):
    young = plan.decide(base_file(name, kind, age=min_age - 1),
                        usage(), POLICY, NOW)
    assert young.verdict == facts.TOO_YOUNG
    assert min_age == young.min_age
    assert min_age - 1 == young.age

    old = plan.decide(base_file(name, kind, age=min_age),
                      usage(), POLICY, NOW)
    assert_decision(
        old, facts.REMOVABLE,
        'unused for %s (minimum %s)' % (text, text))
    assert min_age == old.min_age
    assert min_age == old.age


def test_too_young_reason():
    decision = plan.decide(base_file(IMAGE, facts.ORIGINAL, age=2 * HOUR),
                           usage(), POLICY, NOW)
    assert_decision(decision, facts.TOO_YOUNG, 'unused, 2h of 1d')


@pytest.mark.parametrize('min_age', [
    0,
    DAY])
def test_future_mtime_is_too_young_even_without_minimum_age(min_age):
    decision = plan.decide(
        base_file(IMAGE, facts.ORIGINAL, age=-300), usage(),
        policy(original_min_age=min_age), NOW)
    assert decision.verdict == facts.TOO_YOUNG
    assert decision.age == -300
    assert '5m in the future' in decision.reason


def test_zero_age():
    entry = base_file(IMAGE, facts.ORIGINAL, age=0)
    decision = plan.decide(entry, usage(),
                           policy(original_min_age=0), NOW)
    assert_decision(decision, facts.REMOVABLE,
                    'unused for 0s (minimum 0s)')
    decision = plan.decide(entry, usage(),
                           policy(original_min_age=1), NOW)
    assert_decision(decision, facts.TOO_YOUNG, 'unused, 0s of 1s')


def test_too_young_wins_over_doubts():
    found = usage(doubts=[facts.Doubt('/instances/a/disk', 'timeout')])
    decision = plan.decide(base_file(IMAGE, facts.ORIGINAL, age=HOUR),
                           found, POLICY, NOW)
    assert decision.verdict == facts.TOO_YOUNG


@pytest.mark.parametrize('name, kind', [
    (IMAGE, facts.ORIGINAL),
    ('swap_512', facts.SWAP),
    (OTHER + '_sm', facts.LEGACY_SM)])
def test_doubt_about_everything_keeps_every_old_unused_file(name, kind):
    found = usage(doubts=[
        facts.Doubt('/instances/a/disk', 'qemu-img timed out')])
    reason = ('not removed: /instances/a/disk could not be read: '
              'qemu-img timed out')
    decision = plan.decide(base_file(name, kind), found, POLICY,
                           NOW)
    assert_decision(decision, facts.KEPT, reason)
    assert POLICY.min_age(kind) == decision.min_age


def test_doubt_about_some_names_keeps_only_those():
    found = usage(doubts=[facts.Doubt(
        '/instances/a/disk.local', 'EACCES', frozenset([IMAGE]))])
    kept = plan.decide(base_file(IMAGE, facts.ORIGINAL), found, POLICY,
                       NOW)
    assert_decision(kept, facts.KEPT,
                    'not removed: /instances/a/disk.local could not '
                    'be read: EACCES')
    other = plan.decide(base_file(OTHER, facts.ORIGINAL), found, POLICY,
                        NOW)
    assert other.verdict == facts.REMOVABLE


def test_doubt_reason_names_the_first_and_counts_the_rest():
    found = usage(doubts=[
        facts.Doubt('/instances/a', 'permission denied',
                    frozenset([IMAGE])),
        facts.Doubt('/instances/b/disk', 'timeout'),
        facts.Doubt('/instances/c/disk', 'timeout', frozenset([OTHER])),
    ])
    decision = plan.decide(base_file(IMAGE, facts.ORIGINAL), found,
                           POLICY, NOW)
    assert_decision(decision, facts.KEPT,
                    'not removed: /instances/a could not be read: '
                    'permission denied (+1 more)')


def test_removable_reason_and_facts():
    entry = base_file(IMAGE, facts.ORIGINAL, age=2 * DAY + 3 * HOUR)
    decision = plan.decide(entry, usage(), POLICY, NOW)
    assert decision == facts.Decision(entry, facts.REMOVABLE,
                                      'unused for 2d 3h (minimum 1d)',
                                      age=2 * DAY + 3 * HOUR, min_age=DAY)


# What a listing without IMAGE says about the cache files of these tests:
# every name that is not the sha1 of an existing image is missing from it.
DELETED_NAMES = (IMAGE, IMAGE + '_10737418240', IMAGE + '_sm', 'swap_512',
                 'ephemeral_20_0706d66')


def catalog(deleted=DELETED_NAMES, pinned=(), listed_at=NOW - 60):
    return facts.ImageCatalog(deleted_names=frozenset(deleted),
                              listed_at=listed_at,
                              pinned_names=frozenset(pinned),
                              pin_property='cachekeeper_pinned=true')


GLANCE_POLICY = policy(deleted_image_min_age=HOUR)


def glance_decide(entry, known=catalog(), used=None, rules=GLANCE_POLICY):
    return plan.decide(entry, used or usage(), rules, NOW, known)


# What Glance knows: deleted images and pins by image property.


def test_unused_original_of_deleted_image_goes_after_the_shorter_age():
    result = glance_decide(base_file(IMAGE, facts.ORIGINAL, age=2 * HOUR))
    assert (facts.REMOVABLE,
            'image deleted in Glance; unused for 2h (minimum 1h)', HOUR) == (
        result.verdict, result.reason, result.min_age)


def test_deleted_image_younger_than_its_age_is_too_young():
    result = glance_decide(base_file(IMAGE, facts.ORIGINAL, age=HOUR - 1))
    assert (facts.TOO_YOUNG, 'image deleted in Glance; unused, 59m 59s of '
                             '1h') == (result.verdict, result.reason)


def test_existing_image_keeps_the_original_age():
    result = glance_decide(base_file(OTHER, facts.ORIGINAL, age=2 * HOUR))
    assert (facts.TOO_YOUNG, DAY) == (result.verdict, result.min_age)


@pytest.mark.parametrize('known', [
    None,
    facts.ImageCatalog(),
    facts.ImageCatalog(pinned_names=frozenset([OTHER]))])
def test_no_listing_means_nothing_is_deleted(known):
    entry = base_file(IMAGE, facts.ORIGINAL, age=2 * HOUR)
    assert glance_decide(entry, known).verdict == facts.TOO_YOUNG


@pytest.mark.parametrize('name, kind, age, verdict, min_age', [
    (IMAGE + '_10737418240', facts.RESIZED, 2 * HOUR,
     facts.REMOVABLE, HOUR),
    (IMAGE + '_sm', facts.LEGACY_SM, 2 * HOUR, facts.REMOVABLE,
     HOUR),
    ('swap_512', facts.SWAP, 2 * HOUR - 1, facts.TOO_YOUNG,
     2 * HOUR),
    ('ephemeral_20_0706d66', facts.EPHEMERAL, 2 * HOUR,
     facts.TOO_YOUNG, 3 * HOUR)])
def test_only_originals_can_be_deleted_in_glance(name, kind, age, verdict,
                                                 min_age):
    result = glance_decide(base_file(name, kind, age=age))
    assert (verdict, min_age) == (result.verdict, result.min_age)
    assert 'Glance' not in result.reason


def test_in_use_file_of_deleted_image_is_kept_and_says_so():
    entry = base_file(IMAGE, facts.ORIGINAL, age=10 * DAY)
    result = glance_decide(entry, used=usage([reference(IMAGE)]))
    assert (facts.IN_USE, 'used by /instances/uuid-1/disk; its image no '
                          'longer exists in Glance') == (
        result.verdict, result.reason)


def test_doubts_keep_a_deleted_image():
    result = glance_decide(base_file(IMAGE, facts.ORIGINAL, age=2 * HOUR),
                           used=usage(doubts=[facts.Doubt('/i/disk', 'x')]))
    assert result.verdict == facts.KEPT


def test_removal_disabled_keeps_a_deleted_image():
    result = glance_decide(base_file(IMAGE, facts.ORIGINAL, age=2 * DAY),
                           rules=policy(remove_unused=False,
                                        deleted_image_min_age=HOUR))
    assert result.verdict == facts.KEPT


def test_unset_deleted_age_falls_back_to_the_kind():
    result = glance_decide(base_file(IMAGE, facts.ORIGINAL, age=2 * HOUR),
                           rules=POLICY)
    assert (facts.TOO_YOUNG, 'image deleted in Glance; unused, 2h of 1d') == (
        result.verdict, result.reason)


@pytest.mark.parametrize('name, kind, reason', [
    (IMAGE, facts.ORIGINAL, 'pinned by its Glance image property '
                            'cachekeeper_pinned=true'),
    (IMAGE + '_5368709120', facts.RESIZED,
     'copy of %s, pinned by its Glance image property '
     'cachekeeper_pinned=true' % IMAGE)])
def test_pinned_by_glance_property_and_its_copies(name, kind, reason):
    known = catalog(pinned=[IMAGE])
    result = glance_decide(base_file(name, kind, age=30 * DAY),
                           known)
    assert (facts.PINNED, reason) == (result.verdict, result.reason)


def test_stale_glance_pins_still_pin():
    known = facts.ImageCatalog(pinned_names=frozenset([IMAGE]),
                               pin_property='k=v')
    result = glance_decide(base_file(IMAGE, facts.ORIGINAL, age=30 * DAY),
                           known)
    assert (facts.PINNED, 'pinned by its Glance image property k=v') == (
        result.verdict, result.reason)


def test_configured_pin_wins_over_deletion_in_glance():
    result = glance_decide(base_file(IMAGE, facts.ORIGINAL, age=30 * DAY),
                           rules=policy(pinned_names=frozenset([IMAGE]),
                                        deleted_image_min_age=0))
    assert (facts.PINNED, 'pinned by [image_cache] pinned_images') == (
        result.verdict, result.reason)


def test_plan_passes_the_catalog_on():
    files = [base_file(IMAGE, facts.ORIGINAL, age=2 * HOUR),
             base_file(OTHER, facts.ORIGINAL, age=2 * HOUR)]
    assert [d.verdict for d in plan.plan(files, usage(), GLANCE_POLICY, NOW,
                                         catalog())] == (
        [facts.REMOVABLE, facts.TOO_YOUNG])
    assert [d.verdict for d in plan.plan(files, usage(), GLANCE_POLICY,
                                         NOW)] == (
        [facts.TOO_YOUNG, facts.TOO_YOUNG])


def test_one_decision_per_file_in_the_same_order():
    entries = [
        base_file('swap_512', facts.SWAP),
        base_file(IMAGE, facts.ORIGINAL),
        base_file('lost+found', facts.FOREIGN, file_type='directory'),
        base_file(OTHER, facts.ORIGINAL, age=1),
    ]
    found = usage(references=[reference(IMAGE)])
    decisions = plan.plan(entries, found, POLICY, NOW)
    assert entries == [d.base_file for d in decisions]
    assert [d.verdict for d in decisions] == (
        [facts.REMOVABLE, facts.IN_USE, facts.IGNORED,
         facts.TOO_YOUNG])


def test_empty_cache():
    assert plan.plan([], usage(), POLICY, NOW) == []


@pytest.fixture
def conf():
    conf = cfg.ConfigOpts()
    image_cache.register_opts(conf)
    conf([], project='cachekeeper-test', default_config_files=[])
    yield conf
    # Option groups are shared between ConfigOpts objects (oslo.config
    # copies them shallowly), so overrides must not outlive the test.
    conf.reset()


def test_defaults_are_nova_defaults(conf):
    assert plan.policy_from_conf(conf) == (
        facts.Policy(remove_unused=True, original_min_age=DAY,
                     resized_min_age=HOUR, swap_min_age=DAY,
                     ephemeral_min_age=DAY, pinned_names=frozenset(),
                     deleted_image_min_age=HOUR, residue_min_age=DAY))


def test_deleted_image_age(conf):
    conf.set_override('remove_deleted_image_minimum_age_seconds',
                      600, group='image_cache')
    assert plan.policy_from_conf(conf).deleted_image_min_age == 600


def test_unset_swap_and_ephemeral_follow_original(conf):
    conf.set_override('remove_unused_original_minimum_age_seconds',
                      7 * DAY, group='image_cache')
    conf.set_override('remove_unused_ephemeral_minimum_age_seconds',
                      0, group='image_cache')
    result = plan.policy_from_conf(conf)
    assert result.original_min_age == 7 * DAY
    assert result.swap_min_age == 7 * DAY
    assert result.ephemeral_min_age == 0


def test_removal_switch_and_resized_age(conf):
    conf.set_override('remove_unused_base_images', False,
                      group='image_cache')
    conf.set_override('remove_unused_resized_minimum_age_seconds',
                      60, group='image_cache')
    result = plan.policy_from_conf(conf)
    assert not result.remove_unused
    assert result.resized_min_age == 60


def test_pinned_images_become_cache_names(conf):
    conf.set_override('pinned_images', ['abc', 'image-2'],
                      group='image_cache')
    assert frozenset(['a9993e364706816aba3e25717850c26c9cd0d89d',
                      names.image_cache_name('image-2')]) == (
        plan.policy_from_conf(conf).pinned_names)


def test_only_removable_files_are_held():
    files = [base_file(IMAGE, facts.ORIGINAL),
             base_file(OTHER, facts.ORIGINAL, age=HOUR)]
    decisions = plan.plan(files, usage(), POLICY, NOW)
    held, names = plan.hold_removals(
        decisions, 'not the leader for this cache (leader: host-b)')
    assert names == (IMAGE,)
    assert [d.verdict for d in held] == [facts.KEPT, facts.TOO_YOUNG]
    assert held[0].reason == (
        'unused for 10d (minimum 1d); not removed: not the '
        'leader for this cache (leader: host-b)')
    assert held[0].min_age == DAY
    assert decisions[1] == held[1]


RESIDUE_RULES = policy(residue_min_age=DAY)


def residue_decide(name, age, found=None, rules=None):
    return plan.decide(base_file(name, facts.RESIDUE, age=age),
                       found or usage(), rules or RESIDUE_RULES, NOW)


@pytest.mark.parametrize('suffix', names.DOWNLOAD_SUFFIXES)
def test_stale_download_residue_is_removable(suffix):
    decision = residue_decide(IMAGE + suffix, 2 * DAY)
    assert (decision.verdict, decision.reason, decision.min_age) == (
        facts.REMOVABLE, 'download residue unmodified for 2d (minimum 1d)',
        DAY)


@pytest.mark.parametrize('age, written', [
    (DAY - 1, '23h 59m'),
    (-HOUR, '0s')])
def test_young_residue_is_kept(age, written):
    decision = residue_decide(IMAGE + '.part', age)
    assert (facts.KEPT, 'download residue written %s ago; removed '
                        'once unmodified for 1d' % written) == (
        decision.verdict, decision.reason)


def test_residue_at_its_minimum_age_is_removable():
    assert residue_decide(IMAGE + '.part', DAY).verdict == facts.REMOVABLE


def test_temporary_files_of_others_are_never_removed():
    decision = residue_decide(IMAGE + '.tmp', 100 * DAY)
    assert (facts.KEPT, 'temporary file, not a download of nova or '
                        'cachekeeper; never removed') == (
        decision.verdict, decision.reason)


@pytest.mark.parametrize('label, found, rules, reason', [
    ('referenced',
     usage(references=[reference(IMAGE + '.part', reason='odd')]),
     RESIDUE_RULES, 'download residue, but odd; not removed'),
    ('doubt', usage(doubts=[facts.Doubt('/x', 'gone')]), RESIDUE_RULES,
     'not removed: /x could not be read: gone'),
    ('removal disabled', usage(),
     policy(residue_min_age=DAY, remove_unused=False),
     'removal disabled by [image_cache] remove_unused_base_images')])
def test_the_rules_that_keep_cache_files_keep_residue(label, found, rules,
                                                      reason):
    decision = residue_decide(IMAGE + '.part', 100 * DAY, found, rules)
    assert (decision.verdict, decision.reason) == (facts.KEPT, reason)


def test_residue_min_age_is_its_kinds_min_age():
    assert RESIDUE_RULES.min_age(facts.RESIDUE) == DAY


def test_an_operator_pin_keeps_a_file_and_its_copies_until_it_ends():
    pinned = policy(pins=(facts.Pin(IMAGE, expires_at=NOW + HOUR,
                                    reason='golden'),))
    original = base_file(IMAGE, facts.ORIGINAL)
    resized = base_file(IMAGE + '_10', facts.RESIZED)

    kept = plan.decide(original, usage(), pinned, NOW)
    copy = plan.decide(resized, usage(), pinned, NOW)
    expired = plan.decide(original, usage(), pinned, NOW + HOUR)

    assert (kept.verdict, copy.verdict) == (facts.PINNED, facts.PINNED)
    assert kept.reason.startswith('pinned by cachekeeper-manage cache pin '
                                  'until ')
    assert kept.reason.endswith(': golden')
    assert copy.reason.startswith('copy of %s, pinned by' % IMAGE)
    assert expired.verdict == facts.REMOVABLE
