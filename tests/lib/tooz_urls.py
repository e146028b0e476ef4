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

"""tooz backend URLs that carry secrets, and a port they cannot reach.

One URL per backend that tooz can reach over the network (its
``tooz.backends`` entry points but file and ipc), with every secret its
driver reads from the URL: the password of the netloc, and the query
parameters that hold one. Each secret is written nowhere else, so that a
test can look for it in what cachekeeper shows.
"""

import contextlib
import socket

# {backend: (URL, its secrets)}; ``{port}`` is where the backend listens.
SECRET_URLS = {
    # Through a sentinel that refuses it, the connection fails at once; a
    # master that refuses it is retried by tooz and redis-py for most of a
    # minute.
    'redis': ('redis://cachekeeper:redis-pw@127.0.0.1:{port}?sentinel=main'
              '&sentinel_username=sentinel&sentinel_password=sentinel-pw'
              '&db=0', ('redis-pw', 'sentinel-pw')),
    'zookeeper': ('zookeeper://cachekeeper:zookeeper-pw@127.0.0.1:{port}'
                  '?use_ssl=true&keyfile=/etc/cachekeeper/zk.key'
                  '&keyfile_password=zookeeper-key-pw',
                  ('zookeeper-pw', 'zookeeper-key-pw')),
    'kazoo': ('kazoo://cachekeeper:kazoo-pw@127.0.0.1:{port}'
              '?keyfile_password=kazoo-key-pw', ('kazoo-pw', 'kazoo-key-pw')),
    'memcached': ('memcached://127.0.0.1:{port}?use_ssl=true'
                  '&ssl_key=/etc/cachekeeper/mc.key'
                  '&ssl_key_password=memcached-key-pw',
                  ('memcached-key-pw',)),
    'mysql': ('mysql://cachekeeper:mysql-pw@127.0.0.1:{port}/cachekeeper'
              '?ssl_key=/etc/cachekeeper/db.key', ('mysql-pw',)),
    'postgresql': ('postgresql://cachekeeper:postgresql-pw@127.0.0.1:{port}'
                   '/cachekeeper', ('postgresql-pw',)),
    # etcd3gw and kubernetes read no secret from the URL: a password in
    # the netloc, or a parameter that mask_password knows as a secret, is
    # masked all the same.
    'etcd3+http': ('etcd3+http://cachekeeper:etcd-pw@127.0.0.1:{port}'
                   '?api_version=v3&password=etcd-query-pw',
                   ('etcd-pw', 'etcd-query-pw')),
    'etcd3+https': ('etcd3+https://127.0.0.1:{port}'
                    '?ca_cert=/etc/cachekeeper/ca.pem&secret=etcds-secret',
                    ('etcds-secret',)),
    'kubernetes': ('kubernetes://127.0.0.1:{port}?namespace=openstack'
                   '&token=kubernetes-token', ('kubernetes-token',)),
}


@contextlib.contextmanager
def closed_port():
    """A port of 127.0.0.1 that refuses connections while in the block.

    Bound, so that nothing else takes it, but not listening.
    """
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        yield s.getsockname()[1]
