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

from cachekeeper.conf import groups

image_cache_group = cfg.OptGroup(
    'image_cache',
    title='Image Cache Options',
    help="""
How the image cache in ``$instances_path/$subdirectory_name`` is aged.

The options that nova also has keep nova's names and defaults, so nova.conf
can be passed to cachekeeper as it is.
""")

image_cache_opts = [
    cfg.FloatOpt('manager_interval',
        default=2400,
        min=-1,
        mutable=True,
        deprecated_name='image_cache_manager_interval',
        deprecated_group='DEFAULT',
        help="""
Number of seconds between two passes over the image cache.

Possible values:

* 0: run at the default interval of 60 seconds (not recommended)
* -1 (or any negative value): no passes; the daemon stays up and does
  nothing
* Any other value; fractions of a second are allowed (nova's whole seconds
  read the same)

When cachekeeper runs, set nova's own ``[image_cache] manager_interval`` to -1
in nova.conf so that only one manager ages the cache.
"""),
    cfg.StrOpt('subdirectory_name',
        default='_base',
        deprecated_name='image_cache_subdirectory_name',
        deprecated_group='DEFAULT',
        help="""
Name of the image cache directory, relative to ``[DEFAULT] instances_path``.
A single path component, such as ``_base`` or ``_base_$my_ip`` for
per-host caches on shared storage.
"""),
    cfg.BoolOpt('remove_unused_base_images',
        default=True,
        mutable=True,
        deprecated_group='DEFAULT',
        help="""
Remove unused files from the image cache. When False nothing is removed, but
files in use still have their modification time refreshed.
"""),
    cfg.IntOpt('remove_unused_original_minimum_age_seconds',
        default=(24 * 3600),
        min=0,
        mutable=True,
        deprecated_group='DEFAULT',
        help="""
Unused original images (named after the sha1 of their image id) younger than
this many seconds are kept.
"""),
    cfg.IntOpt('remove_unused_resized_minimum_age_seconds',
        default=3600,
        min=0,
        mutable=True,
        deprecated_group='libvirt',
        help="""
Unused resized copies (``<sha1>_<size>`` and legacy ``<sha1>_sm``) younger
than this many seconds are kept.
"""),
    cfg.IntOpt('remove_unused_swap_minimum_age_seconds',
        min=0,
        mutable=True,
        sample_default='<remove_unused_original_minimum_age_seconds>',
        help="""
Unused swap files (``swap_<MiB>``) younger than this many seconds are kept.
Unset, the original images' age applies, as in nova.
"""),
    cfg.IntOpt('remove_unused_ephemeral_minimum_age_seconds',
        min=0,
        mutable=True,
        sample_default='<remove_unused_original_minimum_age_seconds>',
        help="""
Unused ephemeral files (``ephemeral_<GiB>_<hash>``) younger than this many
seconds are kept. Unset, the original images' age applies, as in nova.
"""),
    cfg.IntOpt('remove_deleted_image_minimum_age_seconds',
        default=3600,
        min=0,
        mutable=True,
        help="""
Unused original images whose image no longer exists in Glance younger than
this many seconds are kept; older ones are removed, without waiting for
``remove_unused_original_minimum_age_seconds``. Glance is asked only when
it is configured in the [glance] group; while it cannot be reached, or its
image list is older than ``[glance] image_list_ttl``, no image counts as
deleted.
"""),
    cfg.IntOpt('precache_headroom_mb',
        default=1024,
        min=0,
        mutable=True,
        help="""
Space in MiB that must remain free on the image cache's filesystem after a
precached image is written. A precache that would leave less is refused
before anything is downloaded.
"""),
    cfg.IntOpt('max_cache_size_mb',
        default=0,
        min=0,
        mutable=True,
        help="""
Upper bound for the space the image cache allocates on disk, in MiB. Above it,
unused files are evicted, in the order of ``eviction_policy``, until the cache
is within the bound again. 0 means no bound.

A file's last use is the later of its modification time and the last pass
that saw it in use. Evicted files skip their kind's minimum age (but not
``eviction_minimum_age_seconds``) and the scrub queue's ``scrub_delay``: they
are deleted in the pass that evicts them. Files in use and pinned files are
never evicted.
"""),
    cfg.IntOpt('max_cache_files',
        default=0,
        min=0,
        mutable=True,
        help="""
Upper bound for the number of files in the image cache, as cinder's
``image_volume_cache_max_count``. Above it, unused files are evicted, in the
order of ``eviction_policy``, until the cache is within the bound again, as
for ``max_cache_size_mb``. 0 means no bound.
"""),
    cfg.FloatOpt('pressure_check_interval',
        default=5,
        min=0,
        mutable=True,
        help="""
Seconds between two checks, between passes, of the cache against
``max_cache_size_mb``, ``max_cache_files`` and
``disk_high_watermark_percent``. A check reads the filesystem's usage and
lists the cache directory, looking only at the files that appeared since the
last pass; nothing is inspected. When the cache is over one of them, a pass
runs at once and evicts what the budget asks for, as every pass does. While
the cache stays over, another pass runs only when new files appear: a pass
that could not bring the cache within its budget would not do better with the
same files. 0 turns the checks off: the budget is then applied only every
``manager_interval``. No check runs while passes are disabled.
"""),
    cfg.IntOpt('disk_high_watermark_percent',
        default=85,
        min=1,
        max=100,
        mutable=True,
        help="""
When the filesystem that holds the image cache is fuller than this percentage
(used space against used plus available, as df counts it), the scrub queue's
waiting files are deleted and then unused files evicted, in the order of
``eviction_policy``, until it is down to ``disk_low_watermark_percent``. 100
turns the watermarks off.
"""),
    cfg.IntOpt('disk_low_watermark_percent',
        default=80,
        min=0,
        max=99,
        mutable=True,
        help="""
Eviction for disk usage stops once the filesystem is below this percentage.
Must be lower than ``disk_high_watermark_percent``.
"""),
    cfg.IntOpt('eviction_minimum_age_seconds',
        default=600,
        min=0,
        mutable=True,
        help="""
Files unused for less than this many seconds are never evicted, whatever the
cache size or disk usage.
"""),
    cfg.StrOpt('eviction_policy',
        default='cost',
        choices=[
            ('lru', 'Least recently used first, as kubelet, ironic and '
                    "glance's image cache evict."),
            ('cost', 'Lowest expected cost first: what evicting a file is '
                     'expected to cost in downloads, from how often '
                     'instances started using it, how often it came back '
                     'after a removal, and its size, aged so that a file '
                     'popular long ago does not stay for ever.'),
        ],
        mutable=True,
        help="""
Which unused files go first when the cache is over ``max_cache_size_mb`` or
the filesystem over ``disk_high_watermark_percent``. An evicted file costs a
download of its size the next time an instance needs it, and images differ by
orders of magnitude in size and in how often they are needed again: ``cost``
keeps the files that would cost the most to download again, ``lru`` only the
most recently used ones. The uses and comebacks ``cost`` counts are kept in
the state database (comebacks while ``thrash_window_seconds`` is not 0);
``cachekeeper-manage cache explain`` shows them, and where a file stands in
the order.

The default is ``cost``: replaying traces of spawns through both
(``bench/eviction_sim.py``), it downloaded 8 to 11% fewer bytes again than
``lru``, and 13 to 16% fewer spawns had to wait for a download, with no trace
where it did worse.
"""),
    cfg.IntOpt('residue_minimum_age_seconds',
        default=(24 * 3600),
        min=3600,
        mutable=True,
        help="""
Download residue (``<name>.part`` and ``<name>.converted``, which nova and
``cachekeeper-manage precache`` write before renaming a download into place)
unmodified for this many seconds is removed, under nova's lock for ``<name>``
and never while another process holds that lock. Younger residue is kept: the
download may still be running.
"""),
    cfg.IntOpt('thrash_window_seconds',
        default=(24 * 3600),
        min=0,
        max=(30 * 24 * 3600),
        mutable=True,
        help="""
A removed file that comes back (nova downloads or creates it again) within
this many seconds of its removal counts as thrash and is reported with a
warning: its minimum age is too short, or the cache's budget too small. 0
turns the detection off. At most 30 days, as long as the scrub queue
remembers removals.
"""),
    cfg.ListOpt('pinned_images',
        default=[],
        mutable=True,
        help="""
Image ids whose cached files are never removed. When Glance is configured
in the [glance] group, a pinned image missing from the cache is downloaded
after a pass. Images carrying ``[glance] pin_property`` are pinned too.
"""),
    cfg.IntOpt('inspect_workers',
        default=4,
        min=1,
        max=64,
        mutable=True,
        help="""
How many disk inspections (``qemu-img info``) run at the same time.
"""),
    cfg.StrOpt('inspect_method',
        default='auto',
        choices=[
            ('auto', 'Read the backing file of a plain qcow2 disk from its '
                     'header; ask qemu-img about every other disk, and '
                     'about any qcow2 header the reader does not fully '
                     'understand.'),
            ('qemu-img', 'Ask qemu-img about every disk.'),
        ],
        mutable=True,
        help="""
How a disk's backing file is found. Either way an answer is kept in the state
database and used again while the disk does not change (same inode, size,
modification and change time), so a pass over unchanged disks starts no
``qemu-img``.
"""),
    cfg.IntOpt('inspect_timeout',
        default=60,
        min=1,
        mutable=True,
        help="""
Wall-clock limit in seconds for one ``qemu-img info`` call. A call that takes
longer is killed, and the disk counts as not inspectable for that pass: nothing
it could use is removed.
"""),
]


def register_opts(conf):
    groups.register(conf, image_cache_group, image_cache_opts)


def list_opts():
    return {image_cache_group: image_cache_opts}
