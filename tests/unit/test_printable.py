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

import io
import logging
import os

import pytest

from cachekeeper import printable


@pytest.mark.parametrize('text, expected', [
    ('/var/lib/nova/instances/_base/a b%s{}\\é', None),
    ('two\nlines', 'two\\nlines'),
    ('back\rto the start', 'back\\rto the start'),
    ('\x1b[31mred\x1b[0m', '\\x1b[31mred\\x1b[0m'),
    ('\x9b2J', '\\x9b2J'),
    ('\u202eevil', '\\u202eevil'),
    ('tab\there\x00', 'tab\\there\\x00'),
    (os.fsdecode(b'not-utf-8-\xff'), 'not-utf-8-\\xff'),
])
def test_escape(text, expected):
    assert printable.escape(text) == (text if expected is None else expected)


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    logger = logging.getLogger('cachekeeper.tests.printable')
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    make_record = logging.getLogRecordFactory()
    try:
        yield logger, stream
    finally:
        logging.setLogRecordFactory(make_record)
        logger.removeHandler(handler)


def test_log_messages_are_escaped_once_installed(log_stream):
    logger, stream = log_stream
    printable.escape_log_messages()
    logger.warning('Unexpected entry %s (%s)', 'x\n2026 CRITICAL forged',
                   'unrecognised name')
    logger.warning('%d%% done', 100)
    assert stream.getvalue() == (
        'Unexpected entry x\\n2026 CRITICAL forged (unrecognised name)\n'
        '100% done\n')


def test_a_message_that_cannot_be_formatted_is_left_to_logging(log_stream):
    logger, _stream = log_stream
    printable.escape_log_messages()
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1,
                               '%d files', ('many',), None)
    assert (record.msg, record.args) == ('%d files', ('many',))
