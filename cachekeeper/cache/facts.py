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

"""What a pass learns about the host, as plain values.

The collecting modules (scan, inventory) produce these; plan turns them into
one verdict per cache file without touching the disk; execute and report
carry the verdicts out and tell about them, a FileReport per file.
"""

import dataclasses
import functools

# Kinds of image cache entries, from their names (scan.classify).
ORIGINAL = 'original'
RESIZED = 'resized'
LEGACY_SM = 'legacy_sm'
SWAP = 'swap'
EPHEMERAL = 'ephemeral'
RESIDUE = 'residue'
FOREIGN = 'foreign'
KINDS = (ORIGINAL, RESIZED, LEGACY_SM, SWAP, EPHEMERAL, RESIDUE, FOREIGN)

# Verdicts, one per cache entry and pass.
IN_USE = 'in_use'
TOO_YOUNG = 'too_young'
PINNED = 'pinned'
QUEUED = 'queued'
REMOVED = 'removed'
KEPT = 'kept'
IGNORED = 'ignored'
ERROR = 'error'
VERDICTS = (IN_USE, TOO_YOUNG, PINNED, QUEUED, REMOVED, KEPT, IGNORED, ERROR)

# The verdict plan gives to a file that may go; execute turns it into
# REMOVED (or KEPT when the re-check inside the nova lock says no).
REMOVABLE = 'removable'


@dataclasses.dataclass(frozen=True, slots=True)
class BaseFile:
    """One entry of the image cache directory, as lstat saw it."""

    name: str
    path: str
    kind: str
    file_type: str
    size: int
    allocated: int
    mtime: float
    dev: int
    ino: int

    @property
    def is_regular(self):
        return self.file_type == 'file'


@dataclasses.dataclass(frozen=True, slots=True)
class Reference:
    """Evidence that an instance uses the cache file called ``name``.

    ``source`` is the instance disk or libvirt.xml the evidence comes from,
    ``chain`` the backing chain from that disk down to the cache file (empty
    when the evidence is not a backing chain) and ``reason`` says how it was
    found, for explain and the report. ``image_id`` is the Glance image
    nova's metadata says the file caches, None when the evidence names none.
    """

    name: str
    source: str
    chain: tuple = ()
    reason: str = ''
    image_id: str = None


@dataclasses.dataclass(frozen=True, slots=True)
class Doubt:
    """Something the inventory could not read: the pass fails closed for it.

    ``names`` are the cache file names the unread thing could use; None
    means it could use any file, so nothing may be removed this pass.
    """

    source: str
    message: str
    names: frozenset = None


@dataclasses.dataclass
class Usage:
    """What the instances on this host use from the image cache."""

    references: dict = dataclasses.field(default_factory=dict)
    doubts: list = dataclasses.field(default_factory=list)
    # (len(doubts), the doubts about every file, the names some doubt
    # names): built when first needed, so that a pass over many files
    # does not scan the doubts for each.
    _doubt_index: tuple = dataclasses.field(
        default=None, init=False, repr=False, compare=False)

    def add_reference(self, reference):
        self.references.setdefault(reference.name, []).append(reference)

    def add_doubt(self, doubt):
        self.doubts.append(doubt)

    def references_to(self, name):
        return self.references.get(name, ())

    def doubts_about(self, name):
        """The doubts that concern ``name``, in order; do not modify."""
        index = self._doubt_index
        if index is None or index[0] != len(self.doubts):
            index = self._doubt_index = (
                len(self.doubts),
                [d for d in self.doubts if d.names is None],
                frozenset().union(*(d.names for d in self.doubts
                                    if d.names is not None)))
        if name not in index[2]:
            return index[1]
        return [d for d in self.doubts if d.names is None or name in d.names]


@dataclasses.dataclass(frozen=True)
class Policy:
    """The aging rules of one pass, read from the configuration."""

    remove_unused: bool
    original_min_age: int
    resized_min_age: int
    swap_min_age: int
    ephemeral_min_age: int
    pinned_names: frozenset = frozenset()
    # Unset, an original whose image Glance no longer has ages like any
    # other original.
    deleted_image_min_age: int = None
    # Unset, download residue is never removed.
    residue_min_age: int = None
    # The Pins an operator set with cachekeeper-manage, expired or not:
    # plan keeps a file only while its pin lasts.
    pins: tuple = ()

    def min_age(self, kind):
        return self._min_ages.get(kind)

    @functools.cached_property
    def pins_by_name(self):
        return {pin.name: pin for pin in self.pins}

    @functools.cached_property
    def _min_ages(self):
        # Asked for every file of every pass: built once.
        return {
            ORIGINAL: self.original_min_age,
            RESIZED: self.resized_min_age,
            LEGACY_SM: self.resized_min_age,
            SWAP: self.swap_min_age,
            EPHEMERAL: self.ephemeral_min_age,
            RESIDUE: self.residue_min_age,
        }


@dataclasses.dataclass(frozen=True)
class Pin:
    """An operator's pin on one cache file (cachekeeper-manage cache pin).

    ``name`` is the cache file it keeps, with its copies when it is an
    original; ``image_id`` the Glance image, when known (a pinned image
    missing from the cache is downloaded); ``expires_at`` when it ends
    (seconds since the epoch), None for never; ``reason`` what the
    operator said.
    """

    name: str
    image_id: str = None
    pinned_at: float = None
    expires_at: float = None
    reason: str = ''
    # Where the pin is kept: this host's state database, or the file
    # every host sharing the cache reads.
    shared: bool = False

    def holds_at(self, now):
        return self.expires_at is None or now < self.expires_at

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FileHistory:
    """What the state database remembers of the use of one cache file.

    ``last_seen_in_use`` and ``first_seen_in_use`` are when a pass last and
    first saw an instance use it (None: never); ``uses`` how many instances
    the passes saw starting to use it; ``comebacks`` how often it came back
    after a removal. The eviction policy (cachekeeper.cache.eviction)
    weighs them.
    """

    last_seen_in_use: float = None
    first_seen_in_use: float = None
    uses: int = 0
    comebacks: int = 0


NO_HISTORY = FileHistory()


@dataclasses.dataclass(frozen=True)
class ImageCatalog:
    """What Glance says about the images behind the cache files.

    ``deleted_names`` are the cache files whose image was missing from a
    listing of Glance's images taken at ``listed_at`` (seconds since the
    epoch) although the files were in the cache before it. ``listed_at``
    is None when no listing recent enough is at hand: then nothing counts
    as deleted. ``pinned_names`` are the cache names of the images that
    carry ``pin_property``: the last ones known, even when the listing is
    stale, because a pin only ever keeps a file.
    """

    deleted_names: frozenset = frozenset()
    listed_at: float = None
    pinned_names: frozenset = frozenset()
    pin_property: str = ''
    # {image id: name} of the images of the last listing, for the operator.
    image_names: dict = dataclasses.field(default_factory=dict)


# Not frozen, though never changed once made (dataclasses.replace makes
# another): a pass makes one per cache file, and a frozen dataclass takes
# three times as long to make.
@dataclasses.dataclass(slots=True)
class Decision:
    """The verdict for one cache entry, with what it rests on.

    ``drain_now`` asks for a removed file to be deleted in this pass,
    without waiting for the scrub queue's delay: the cache is over its
    disk-space budget (see cachekeeper.cache.budget).
    """

    base_file: BaseFile
    verdict: str
    reason: str
    age: float
    min_age: int = None
    references: tuple = ()
    drain_now: bool = False


# Not frozen, as Decision: one per cache file and pass.
@dataclasses.dataclass(slots=True)
class FileReport:
    """What became of one file in a pass, as the pass report lists it.

    Made from the Decision by execute, or for a leftover by residue; the
    report (cachekeeper.report) renders them.
    """

    path: str
    kind: str
    verdict: str
    age_s: float
    size: int
    reason: str

    @classmethod
    def from_decision(cls, decision, verdict=None, reason=None):
        base_file = decision.base_file
        # Positional, as plan.decide makes a Decision: one per cache file.
        return cls(base_file.path, base_file.kind, verdict or decision.verdict,
                   round(decision.age, 1), base_file.size,
                   reason or decision.reason)

    def to_dict(self):
        # dataclasses.asdict copies deeply, ten times slower for strings.
        return {name: getattr(self, name) for name in self.__slots__}
