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

"""Where an operator's pins are kept, and what every pass reads of them.

A host's own cache keeps its pins in the state database
(cachekeeper.state.pins). A cache shared by several hosts (nova's storage
registry names others) keeps them in PINS_FILE beside the registry, so
that every host's pass reads the same pins whichever host set them; the
file is rewritten whole under a lock of nova's lock directory, as the
registry is. A pass reads both places.
"""

import contextlib
import json
import os

from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import registry
from cachekeeper import smallfile
from cachekeeper.state import pins as state_pins

PINS_FILE = 'cachekeeper_pins'
LOCK_NAME = 'cachekeeper-pins-lock'
TEMP_PREFIX = '.cachekeeper_pins-'
# A few pins of a few hundred bytes each.
MAX_PINS_BYTES = 1024 * 1024


class PinsError(Exception):
    """The shared pins cannot be read; the message is one line, the
    reason without the path.
    """


def pins_path(instances_path):
    return os.path.join(instances_path, PINS_FILE)


def read(conf, state_db, now):
    """The facts.Pin that hold at ``now``, from both places, by name.

    Raises PinsError when the shared file cannot be read (its pins are
    unknown) and db.StateError when the state database cannot.
    """
    found = {row['name']: facts.Pin(**row)
             for row in state_pins.pins(state_db, now)}
    found.update((pin.name, pin) for pin in _read_shared(conf.instances_path)
                 if pin.holds_at(now))
    return [found[name] for name in sorted(found)]


def put(conf, state_db, pin):
    """Keep ``pin`` where the hosts that use the cache read it.

    Returns the facts.Pin as kept. Raises OSError when the shared file
    cannot be written, PinsError when it cannot be read (it is left
    alone) and db.StateError.
    """
    storage = registry.read(conf.instances_path, create_lock=False)
    if not storage.is_shared(conf.host):
        state_pins.put(state_db, {column: getattr(pin, column)
                                  for column in state_pins.COLUMNS})
        return pin
    pin = facts.Pin(**dict(pin.to_dict(), shared=True))
    with _locked_shared(conf.instances_path) as kept:
        kept[pin.name] = pin
        _write_shared(conf.instances_path, kept.values(), pin.pinned_at)
    return pin


def delete(conf, state_db, name):
    """Remove the pins of cache file ``name``; whether there was one."""
    removed = state_pins.delete(state_db, name)
    if not os.path.exists(pins_path(conf.instances_path)):
        return removed
    with _locked_shared(conf.instances_path) as kept:
        if kept.pop(name, None) is not None:
            removed = True
            _write_shared(conf.instances_path, kept.values(), None)
    return removed


@contextlib.contextmanager
def _locked_shared(instances_path):
    """The shared pins by name, under their lock, for rewriting."""
    with locks.nova_lock(instances_path, LOCK_NAME):
        yield {pin.name: pin for pin in _read_shared(instances_path)}


def _write_shared(instances_path, kept, now):
    """Rewrite the shared file with ``kept``, those expired by ``now`` out."""
    document = [{field: getattr(pin, field) for field in state_pins.COLUMNS}
                for pin in sorted(kept, key=lambda p: p.name)
                if now is None or pin.holds_at(now)]
    smallfile.replace_json(pins_path(instances_path), document, TEMP_PREFIX)


def _read_shared(instances_path):
    path = pins_path(instances_path)
    try:
        document = json.loads(smallfile.read(path, MAX_PINS_BYTES))
    except FileNotFoundError:
        return []
    except (OSError, ValueError, RecursionError) as e:
        raise PinsError(str(e))
    try:
        return [facts.Pin(shared=True, **{field: entry.get(field)
                                          for field in state_pins.COLUMNS})
                for entry in document]
    except (AttributeError, TypeError) as e:
        raise PinsError('not a list of pins: %s' % e)
