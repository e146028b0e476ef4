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

import logging
import os
import types

from oslo_config import cfg
import pytest

import cachekeeper.conf
from cachekeeper import config


class ConfDir:
    """A config file and its state_path, parsed as the daemon parses it."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.state_path = os.path.join(self.tmp, 'state')
        os.mkdir(self.state_path)

    def parse(self, text):
        conf = cfg.ConfigOpts()
        cachekeeper.conf.register_opts(conf)
        path = os.path.join(self.tmp, 'cachekeeper.conf')
        with open(path, 'w') as f:
            f.write('[DEFAULT]\nstate_path = %s\n' % self.state_path)
            f.write(text)
        config.parse_args(['cachekeeper', '--config-file', path], conf=conf)
        return conf

    def problems(self, text):
        with pytest.raises(config.ConfigError) as ctx:
            self.parse(text)
        return ctx.value.problems


@pytest.fixture
def conf_dir(tmp_path):
    return ConfDir(str(tmp_path))


def test_defaults_are_valid(conf_dir):
    conf = conf_dir.parse('')
    assert conf.image_cache.manager_interval == 2400
    assert conf.image_cache.subdirectory_name == '_base'
    image_cache = conf.image_cache
    assert image_cache.remove_unused_original_minimum_age_seconds == 86400
    assert image_cache.remove_unused_resized_minimum_age_seconds == 3600
    assert conf.libvirt.images_address_space_limit == 2


def test_nova_deprecated_names_are_read(conf_dir):
    # An old nova.conf still carries these in [DEFAULT] and [libvirt].
    conf = conf_dir.parse('image_cache_manager_interval = 60\n'
                       'image_cache_subdirectory_name = _base_x\n'
                       '[libvirt]\n'
                       'remove_unused_resized_minimum_age_seconds = 7\n')
    assert conf.image_cache.manager_interval == 60
    assert conf.image_cache.subdirectory_name == '_base_x'
    assert (conf.image_cache
                     .remove_unused_resized_minimum_age_seconds) == 7


@pytest.mark.parametrize('text, option', [
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
])
def test_each_bad_value_is_one_line_naming_the_option(conf_dir, text,
                                                      option):
    problems = conf_dir.problems(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(option + ':'), problems
    assert '\n' not in problems[0]


def test_every_problem_is_reported(conf_dir):
    problems = conf_dir.problems('[image_cache]\nmanager_interval = x\n'
                              'inspect_workers = y\n')
    assert [p.split(':')[0] for p in problems] == (
        ['[image_cache] inspect_workers',
         '[image_cache] manager_interval'])


def test_state_path_missing(conf_dir):
    os.rmdir(conf_dir.state_path)
    problems = conf_dir.problems('')
    assert len(problems) == 1
    assert '[DEFAULT] state_path: ' in problems[0]
    assert 'does not exist' in problems[0]


def test_state_path_is_a_file(conf_dir):
    os.rmdir(conf_dir.state_path)
    open(conf_dir.state_path, 'w').close()
    problems = conf_dir.problems('')
    assert 'not a directory' in problems[0]


@pytest.mark.parametrize('read_only, reason', [
    (True, 'is on a read-only file system (systemd ProtectSystem?)'),
    (False, 'is not writable by this user'),
])
def test_state_path_not_writable_says_why(conf_dir, monkeypatch, read_only,
                                          reason):
    # A read-only mount is what systemd's ProtectSystem=strict makes of a
    # path outside ReadWritePaths= (tests/system/test_systemd_sandbox.py
    # mounts one for real).
    access, statvfs = os.access, os.statvfs
    monkeypatch.setattr(os, 'access', lambda path, mode: (
        path != conf_dir.state_path and access(path, mode)))
    monkeypatch.setattr(os, 'statvfs', lambda path: (
        types.SimpleNamespace(f_flag=os.ST_RDONLY if read_only else 0)
        if path == conf_dir.state_path else statvfs(path)))
    problems = conf_dir.problems('')
    assert problems == ['[DEFAULT] state_path: %s %s' % (
        conf_dir.state_path, reason)]


def test_missing_config_file(conf_dir):
    conf = cfg.ConfigOpts()
    cachekeeper.conf.register_opts(conf)
    missing = os.path.join(conf_dir.tmp, 'missing.conf')
    with pytest.raises(config.ConfigError) as ctx:
        config.parse_args(['cachekeeper', '--config-file', missing],
                          conf=conf)
    assert len(ctx.value.problems) == 1
    assert missing in ctx.value.problems[0]


class ReloadDir:
    """A config file that is written again, then reloaded."""

    def __init__(self, tmp, caplog):
        self.caplog = caplog
        self.path = os.path.join(tmp, 'cachekeeper.conf')
        self.state_path = os.path.join(tmp, 'state')
        os.mkdir(self.state_path)

    def write(self, text):
        with open(self.path, 'w') as f:
            f.write('[DEFAULT]\nstate_path = %s\n[image_cache]\n%s'
                    % (self.state_path, text))

    def reload(self, conf, text):
        """Reload ``text``; return the errors logged, at least one."""
        self.write(text)
        self.caplog.clear()
        with self.caplog.at_level(logging.ERROR, logger='cachekeeper.config'):
            conf.mutate_config_files()
        logged = [r.getMessage() for r in self.caplog.records
                  if r.name == 'cachekeeper.config' and
                  r.levelno >= logging.ERROR]
        assert logged, 'no error logged by cachekeeper.config'
        return logged


@pytest.fixture
def reload_dir(tmp_path, caplog):
    return ReloadDir(str(tmp_path), caplog)


def test_bad_values_keep_the_running_ones_until_a_good_reload(reload_dir):
    conf = cfg.ConfigOpts()
    cachekeeper.conf.register_opts(conf)
    reload_dir.write('manager_interval = 60\n')
    config.parse_args(['cachekeeper', '--config-file', reload_dir.path],
                      conf=conf)
    conf.register_mutate_hook(config.ReloadGuard(conf))

    logged = reload_dir.reload(conf, 'manager_interval = often\n')
    assert len(logged) == 1, logged
    assert '[image_cache] manager_interval' in logged[0]
    assert conf.image_cache.manager_interval == 60
    # Still bad, and another value that is bad only with the others.
    logged = reload_dir.reload(conf, 'manager_interval = often\n'
                          'disk_low_watermark_percent = 90\n')
    assert len(logged) == 1, logged
    assert conf.image_cache.manager_interval == 60
    assert conf.image_cache.disk_low_watermark_percent == 80

    reload_dir.write('manager_interval = 30\n')
    conf.mutate_config_files()
    assert conf.image_cache.manager_interval == 30
    assert config.validate(conf) == []


@pytest.mark.parametrize('text', [
    # Not a URL, so not masked as one: not shown at all.
    '[coordination]\nbackend_url = redis:/:s3cret@10.0.0.1\n',
    # A line oslo.config cannot parse, which it quotes.
    '[coordination]\n  backend_url = redis://:s3cret@10.0.0.1\n',
])
def test_a_problem_does_not_show_a_secret(conf_dir, text):
    [problem] = conf_dir.problems(text)
    assert 's3cret' not in problem


class EtcFiles:
    """nova.conf and cachekeeper.conf where DEFAULT_CONFIG_FILES says,
    which is in a temporary directory rather than in /etc.
    """

    def __init__(self, tmp, monkeypatch):
        self.tmp = tmp
        self.nova_conf = os.path.join(tmp, 'nova', 'nova.conf')
        self.cachekeeper_conf = os.path.join(tmp, 'cachekeeper',
                                             'cachekeeper.conf')
        monkeypatch.setattr(config, 'DEFAULT_CONFIG_FILES',
                            (self.nova_conf, self.cachekeeper_conf))
        self.state_path = os.path.join(tmp, 'state')
        os.mkdir(self.state_path)

    def write(self, path, text):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(text)
        return path

    def write_both(self):
        # nova's state_path is nova's own directory: cachekeeper.conf's wins.
        self.write(self.nova_conf, '[DEFAULT]\n'
                   'instances_path = /srv/nova/instances\n'
                   'host = compute-7\n'
                   'state_path = /var/lib/nova\n')
        self.write(self.cachekeeper_conf,
                   '[DEFAULT]\nstate_path = %s\n' % self.state_path)

    def parse(self, *args):
        conf = cfg.ConfigOpts()
        cachekeeper.conf.register_opts(conf)
        config.parse_args(['cachekeeper-manage'] + list(args), conf=conf)
        return conf


@pytest.fixture
def etc_files(tmp_path, monkeypatch):
    return EtcFiles(str(tmp_path), monkeypatch)


def test_without_config_options_nova_conf_then_cachekeeper_conf(etc_files):
    etc_files.write_both()
    conf = etc_files.parse()
    assert conf.config_file == [etc_files.nova_conf,
                                etc_files.cachekeeper_conf]
    assert (conf.instances_path, conf.host, conf.state_path) == (
        '/srv/nova/instances', 'compute-7', etc_files.state_path)


def test_a_default_config_file_that_does_not_exist_is_skipped(etc_files):
    etc_files.write(etc_files.cachekeeper_conf,
                    '[DEFAULT]\nstate_path = %s\n' % etc_files.state_path)
    conf = etc_files.parse()
    assert conf.config_file == [etc_files.cachekeeper_conf]
    assert conf.instances_path == '/var/lib/nova/instances'


@pytest.mark.parametrize('option', ['--config-file', '--config-dir'])
@pytest.mark.parametrize('spelling', ['{option} {path}', '{option}={path}'])
def test_a_config_file_or_directory_given_replaces_the_defaults(
        etc_files, option, spelling):
    etc_files.write_both()
    given = etc_files.write(
        os.path.join(etc_files.tmp, 'given', 'given.conf'),
        '[DEFAULT]\nstate_path = %s\n' % etc_files.state_path)
    path = given if option == '--config-file' else os.path.dirname(given)
    conf = etc_files.parse(*spelling.format(option=option,
                                            path=path).split())
    assert conf.config_file == ([given] if option == '--config-file' else [])
    assert conf.instances_path == '/var/lib/nova/instances'


def test_help_says_which_config_files_are_read_by_default(capsys):
    conf = cfg.ConfigOpts()
    with pytest.raises(SystemExit):
        config.parse_args(['cachekeeper-manage', '--help'], conf=conf)
    help_text = ' '.join(capsys.readouterr().out.split())
    assert config.CONFIG_FILES_HELP in help_text
    assert ('/etc/nova/nova.conf and then /etc/cachekeeper/cachekeeper.conf'
            in help_text)
