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

"""The eviction policies: which unused file the budget evicts first.

``[image_cache] eviction_policy`` chooses one. An evicted file costs a
download of its size the next time an instance needs it, and images differ
by orders of magnitude in size and in how often they are needed again.

``lru`` evicts the least recently used file first, as kubelet, ironic,
glance's and cinder's image caches do.

``cost`` evicts the lowest GreedyDual-Size-Frequency priority first
(Cherkasova, "Improving WWW Proxy Performance with Greedy-Dual-Size-
Frequency Caching Policy", HP Labs, 1998; Arlitt, Cherkasova, Dilley,
Friedrich and Jin, "Evaluating Content Management Techniques for Web Proxy
Caches", 2000, where GDSF and LFU with Dynamic Aging are measured; both
are replacement policies of Squid)::

    H = L + F * C / S

    priority = last use + CREDIT * uses per week * (size + DOWNLOAD_OVERHEAD)
                                                    / size

``L``, the inflation value of GreedyDual (Young, "The k-server dual and
loose competitiveness for paging", 1994; Cao and Irani, "Cost-Aware WWW
Proxy Caching Algorithms", 1997, for GreedyDual-Size), is what ages the
cache: it rises as files are evicted, so a file not used for a while falls
below the files used since. Here it is the file's last use in seconds (the
later of its mtime and the last pass that saw it in use): the passes evict
minutes apart, and the wall clock is an inflation value that needs no state
between passes and reads as a time. The priority is then a time: the file
is evicted as if it had last been used then.

``F``, the frequency, is the file's uses per week: one for the download
that brought it, one for each instance a pass saw starting to use it
(facts.FileHistory.uses) and one for each time it came back after a removal
(a comeback is a use the last eviction made a download), over the weeks
since a pass first saw it in use, never fewer than one. The history
outlives the file in the ledger, so an evicted image that comes back keeps
its uses: Breslau, Cao, Fan, Phillips and Shenker ("Web Caching and
Zipf-like Distributions: Evidence and Implications", 1999) show that such
"perfect LFU" does better than an LFU that forgets what it evicts. It is a
rate rather than GDSF's count so that an image popular long ago loses its
credit week after week without uses, the aim of LFU with Dynamic Aging: a
count would keep a file used a thousand times a year ago for a thousand
days.

``C / S``, the cost of a download per byte it frees: its bytes plus a fixed
cost per download (the Glance request, nova's lock, the checksum and format
checks, a spawn waiting), DOWNLOAD_OVERHEAD bytes' worth. With the bytes
alone the size would cancel out and the order would minimise the bytes
downloaded again; the fixed part keeps small images a little longer, which
saves spawns many waits for few bytes.

``CREDIT`` makes a use a week worth a day of recency. Files of one size
without history earn the same credit: among them ``cost`` evicts as ``lru``
does. The constants were chosen on the traces of bench/eviction_sim.py,
where the bytes downloaded again change little around them;
bench/README.rst has the numbers, and why ``cost`` is the default.

Everything here is a pure function of its arguments, like budget and plan.
"""

import dataclasses

from oslo_utils import units

from cachekeeper.cache import facts
from cachekeeper import fmt

LRU = 'lru'
COST = 'cost'
POLICIES = (LRU, COST)

WEEK = 7 * 86400
# Seconds of recency a use a week earns a file.
CREDIT = 86400
# A download's fixed cost, in bytes: about 2 s at 1 Gbit/s.
DOWNLOAD_OVERHEAD = 256 * units.Mi

_ORDER_TEXTS = {LRU: 'least recently used first',
                COST: 'lowest expected cost first'}


# Not frozen, as facts.Decision: one per evictable file and pass.
@dataclasses.dataclass(slots=True)
class Ranked:
    """A file the budget may evict, and what places it in the order.

    ``priority`` orders the files, the lowest evicted first; under the
    policies here it is a time: ``last_use`` under ``lru``, the last use
    plus the credit the file's ``history`` earns under ``cost``.
    """

    base_file: facts.BaseFile
    policy: str
    last_use: float
    history: facts.FileHistory
    priority: float

    def parts(self, now):
        """What the priority is made of, as text."""
        text = 'last used %s ago' % fmt.duration(max(now - self.last_use, 0))
        if self.policy != COST:
            return text
        history = self.history
        since = ('' if history.first_seen_in_use is None else
                 ' in %s' % fmt.duration(now - history.first_seen_in_use))
        return '%s, %s, %s%s, %s to download again: credit %s' % (
            text, _count(history.uses, 'use'),
            _count(history.comebacks, 'comeback'), since,
            fmt.size(self.base_file.size),
            fmt.duration(self.priority - self.last_use))


def _count(number, noun):
    return '%d %s%s' % (number, noun, '' if number == 1 else 's')


def last_use(base_file, history):
    """The later of ``base_file``'s mtime and the last pass that used it."""
    seen = history.last_seen_in_use
    return base_file.mtime if seen is None else max(base_file.mtime, seen)


def credit(base_file, history, now):
    """The seconds of recency ``cost`` adds to a file's last use."""
    first = history.first_seen_in_use
    weeks = max(0 if first is None else now - first, WEEK) / WEEK
    uses_per_week = (1 + history.uses + history.comebacks) / weeks
    cost_per_byte = ((base_file.size + DOWNLOAD_OVERHEAD) /
                     max(base_file.size, 1))
    return CREDIT * uses_per_week * cost_per_byte


def eviction_order(candidates, policy, now):
    """The files that may be evicted, as Ranked, the first to go first.

    ``candidates`` are (facts.BaseFile, facts.FileHistory) pairs;
    ``policy`` is one of POLICIES; ties go by name.
    """
    ranked = []
    for base_file, history in candidates:
        used = last_use(base_file, history)
        priority = used
        if policy == COST:
            priority += credit(base_file, history, now)
        ranked.append(Ranked(base_file, policy, used, history, priority))
    ranked.sort(key=lambda r: (r.priority, r.base_file.name))
    return ranked


def order_text(policy):
    """How ``policy`` orders the files, for an eviction's reason."""
    return _ORDER_TEXTS.get(policy, 'in %s order' % policy)
