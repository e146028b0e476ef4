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

"""Text about files, made safe for a log line or a terminal.

File names come from whoever can write instances_path: a newline in one
would forge a log line, an escape sequence would drive the terminal that
shows it, and a byte that is not UTF-8 cannot be written to a UTF-8
stream. Such characters are shown escaped, as Python writes them.

The escaping has a module of its own, apart from the formatting helpers of
fmt: it is a guard of every log line and every line cachekeeper-manage
prints (escape_log_messages installs it into logging), not a way to write
a value.
"""

import logging
import re

# C0 and C1 controls and DEL, the line and paragraph separators, the
# bidirectional controls that reorder what follows them on screen, and the
# surrogates that stand for bytes that are not UTF-8 (os.fsdecode).
_UNSAFE = re.compile('[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e'
                     '\u2066-\u2069\udc80-\udcff]')


def _escaped(match):
    char = match.group()
    if '\udc80' <= char <= '\udcff':
        return '\\x%02x' % (ord(char) - 0xdc00)
    return char.encode('unicode_escape').decode('ascii')


def escape(text):
    """Return ``text`` with what a log line or terminal must not show as
    it is escaped: a newline as \\n, ESC as \\x1b, a byte that is not
    UTF-8 as \\xNN.
    """
    return _UNSAFE.sub(_escaped, text)


def escape_log_messages():
    """Escape the message of every log record made from now on.

    At the making of the record rather than in a handler, so that it holds
    for every handler, including those a reloaded log_config_append makes.
    Tracebacks are left as they are: they are the formatter's, not the
    message's.
    """
    make_record = logging.getLogRecordFactory()

    def make_escaped_record(*args, **kwargs):
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:
            # The handler reports a message that cannot be formatted.
            return record
        if _UNSAFE.search(message):
            record.msg, record.args = escape(message), ()
        return record

    logging.setLogRecordFactory(make_escaped_record)
