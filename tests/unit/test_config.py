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

import os
import unittest

import fixtures
from oslo_config import cfg

import cachekeeper.conf
from cachekeeper import config


class ParseArgsTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.state_path = os.path.join(self.tmp, 'state')
        os.mkdir(self.state_path)

    def _parse(self, text):
        conf = cfg.ConfigOpts()
        cachekeeper.conf.register_opts(conf)
        path = os.path.join(self.tmp, 'cachekeeper.conf')
        with open(path, 'w') as f:
            f.write('[DEFAULT]\nstate_path = %s\n' % self.state_path)
            f.write(text)
        config.parse_args(['cachekeeper', '--config-file', path], conf=conf)
        return conf

    def _problems(self, text):
        with self.assertRaises(config.ConfigError) as ctx:
            self._parse(text)
        return ctx.exception.problems

    def test_defaults_are_valid(self):
        conf = self._parse('')
        self.assertEqual(2400, conf.image_cache.manager_interval)
        self.assertEqual('_base', conf.image_cache.subdirectory_name)
        self.assertEqual(86400, conf.image_cache
                         .remove_unused_original_minimum_age_seconds)
        self.assertEqual(3600, conf.image_cache
                         .remove_unused_resized_minimum_age_seconds)
        self.assertEqual(2, conf.libvirt.images_address_space_limit)

    def test_nova_deprecated_names_are_read(self):
        # An old nova.conf still carries these in [DEFAULT] and [libvirt].
        conf = self._parse('image_cache_manager_interval = 60\n'
                           'image_cache_subdirectory_name = _base_x\n'
                           '[libvirt]\n'
                           'remove_unused_resized_minimum_age_seconds = 7\n')
        self.assertEqual(60, conf.image_cache.manager_interval)
        self.assertEqual('_base_x', conf.image_cache.subdirectory_name)
        self.assertEqual(7, conf.image_cache
                         .remove_unused_resized_minimum_age_seconds)

    def test_each_bad_value_is_one_line_naming_the_option(self):
        cases = [
            ('[image_cache]\nmanager_interval = abc\n',
             '[image_cache] manager_interval'),
            ('[image_cache]\nmanager_interval = -2\n',
             '[image_cache] manager_interval'),
            ('[image_cache]\nremove_unused_base_images = maybe\n',
             '[image_cache] remove_unused_base_images'),
            ('[image_cache]\n'
             'remove_unused_original_minimum_age_seconds = -1\n',
             '[image_cache] remove_unused_original_minimum_age_seconds'),
            ('[image_cache]\n'
             'remove_unused_swap_minimum_age_seconds = -5\n',
             '[image_cache] remove_unused_swap_minimum_age_seconds'),
            ('[image_cache]\ninspect_workers = 0\n',
             '[image_cache] inspect_workers'),
            ('[image_cache]\ndisk_high_watermark_percent = 101\n',
             '[image_cache] disk_high_watermark_percent'),
            ('[image_cache]\ndisk_low_watermark_percent = 90\n',
             '[image_cache] disk_low_watermark_percent'),
            ('[image_cache]\nsubdirectory_name = a/b\n',
             '[image_cache] subdirectory_name'),
            ('[image_cache]\nsubdirectory_name = ..\n',
             '[image_cache] subdirectory_name'),
            ('[image_cache]\npinned_images = a,,b\n',
             '[image_cache] pinned_images'),
            ('[libvirt]\nimages_cpu_time_limit = 0\n',
             '[libvirt] images_cpu_time_limit'),
            ('[scrubber]\nscrub_delay = -5\n',
             '[scrubber] scrub_delay'),
            ('[scrubber]\nquarantine_dir = relative/dir\n',
             '[scrubber] quarantine_dir'),
            ('[coordination]\nbackend_url = nonsense\n',
             '[coordination] backend_url'),
            ('service_backend = gevent\n',
             '[DEFAULT] service_backend'),
            ('instances_path = relative/path\n',
             '[DEFAULT] instances_path'),
            ('[glance]\npin_property = no-value\n',
             '[glance] pin_property'),
            ('[glance]\npin_property = =true\n',
             '[glance] pin_property'),
            ('[glance]\nimage_list_ttl = -1\n',
             '[glance] image_list_ttl'),
            ('[glance]\nauth_type = none\n',
             '[glance] endpoint_override'),
            ('[glance]\nauth_type = no-such-plugin\n',
             '[glance] auth_type'),
            ('[glance]\nauth_type = password\nusername = u\n'
             'password = p\n',
             '[glance] auth_url'),
            ('[image_cache]\n'
             'remove_deleted_image_minimum_age_seconds = -1\n',
             '[image_cache] remove_deleted_image_minimum_age_seconds'),
        ]
        for text, option in cases:
            with self.subTest(option=option, text=text):
                problems = self._problems(text)
                self.assertEqual(1, len(problems), problems)
                self.assertTrue(problems[0].startswith(option + ':'),
                                problems)
                self.assertNotIn('\n', problems[0])

    def test_every_problem_is_reported(self):
        problems = self._problems('[image_cache]\nmanager_interval = x\n'
                                  'inspect_workers = y\n')
        self.assertEqual(['[image_cache] inspect_workers',
                          '[image_cache] manager_interval'],
                         [p.split(':')[0] for p in problems])

    def test_state_path_missing(self):
        os.rmdir(self.state_path)
        problems = self._problems('')
        self.assertEqual(1, len(problems))
        self.assertIn('[DEFAULT] state_path: ', problems[0])
        self.assertIn('does not exist', problems[0])

    def test_state_path_is_a_file(self):
        os.rmdir(self.state_path)
        open(self.state_path, 'w').close()
        problems = self._problems('')
        self.assertIn('not a directory', problems[0])

    def test_missing_config_file(self):
        conf = cfg.ConfigOpts()
        cachekeeper.conf.register_opts(conf)
        missing = os.path.join(self.tmp, 'missing.conf')
        with self.assertRaises(config.ConfigError) as ctx:
            config.parse_args(['cachekeeper', '--config-file', missing],
                              conf=conf)
        self.assertEqual(1, len(ctx.exception.problems))
        self.assertIn(missing, ctx.exception.problems[0])


class ReloadGuardTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        tmp = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(tmp, 'cachekeeper.conf')
        self.state_path = os.path.join(tmp, 'state')
        os.mkdir(self.state_path)

    def _write(self, text):
        with open(self.path, 'w') as f:
            f.write('[DEFAULT]\nstate_path = %s\n[image_cache]\n%s'
                    % (self.state_path, text))

    def _reload(self, conf, text):
        self._write(text)
        with self.assertLogs('cachekeeper.config', 'ERROR') as logged:
            conf.mutate_config_files()
        return logged.output

    def test_bad_values_keep_the_running_ones_until_a_good_reload(self):
        conf = cfg.ConfigOpts()
        cachekeeper.conf.register_opts(conf)
        self._write('manager_interval = 60\n')
        config.parse_args(['cachekeeper', '--config-file', self.path],
                          conf=conf)
        conf.register_mutate_hook(config.ReloadGuard(conf))

        logged = self._reload(conf, 'manager_interval = often\n')
        self.assertEqual(1, len(logged), logged)
        self.assertIn('[image_cache] manager_interval', logged[0])
        self.assertEqual(60, conf.image_cache.manager_interval)
        # Still bad, and another value that is bad only with the others.
        logged = self._reload(conf, 'manager_interval = often\n'
                              'disk_low_watermark_percent = 90\n')
        self.assertEqual(1, len(logged), logged)
        self.assertEqual(60, conf.image_cache.manager_interval)
        self.assertEqual(80, conf.image_cache.disk_low_watermark_percent)

        self._write('manager_interval = 30\n')
        conf.mutate_config_files()
        self.assertEqual(30, conf.image_cache.manager_interval)
        self.assertEqual([], config.validate(conf))
