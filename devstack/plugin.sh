#!/bin/bash
#
# devstack/plugin.sh
# Functions to install, configure and run cachekeeper, the image cache
# manager for nova's libvirt _base, on compute hosts

# Dependencies:
# ``functions`` file
# ``DEST``, ``DATA_DIR``, ``STACK_USER`` must be defined
# ``NOVA_CONF``, ``NOVA_CPU_CONF``, ``NOVA_INSTANCES_PATH`` (lib/nova)

# ``stack.sh`` calls the entry points in this order:
#
# cachekeeper
# install - install_cachekeeper
# post-config - configure_cachekeeper (only where n-cpu is enabled)
# extra - start_cachekeeper (only where n-cpu is enabled)
# unstack - stop_cachekeeper
# clean - cleanup_cachekeeper

# Save trace setting
XTRACE=$(set +o | grep xtrace)
set -o xtrace


# Functions
# ---------

# install_cachekeeper() - Install cachekeeper. The qemu-img it inspects
# disks with is in devstack/files/debs/cachekeeper and
# devstack/files/rpms/cachekeeper, which stack.sh installs with the other
# system packages, before any plugin phase.
function install_cachekeeper {
    setup_develop $CACHEKEEPER_DIR
}

# disable_nova_image_cache_manager() - Leave the image cache to cachekeeper
function disable_nova_image_cache_manager {
    # nova-compute reads $NOVA_CPU_CONF, but lib/nova builds that file by
    # copying $NOVA_CONF when it starts nova-compute, after post-config: set
    # both so the value survives the copy and a later restack.
    iniset $NOVA_CONF image_cache manager_interval -1
    if [[ -n "${NOVA_CPU_CONF:-}" && "$NOVA_CPU_CONF" != "$NOVA_CONF" ]]; then
        iniset $NOVA_CPU_CONF image_cache manager_interval -1
    fi
}

# configure_cachekeeper() - Create the config file and the state directory
function configure_cachekeeper {
    sudo install -d -o $STACK_USER $CACHEKEEPER_CONF_DIR
    # The state holds the scrub queue: only the service user may read it.
    sudo install -d -o $STACK_USER -m 0700 $CACHEKEEPER_STATE_PATH

    local generator_conf
    generator_conf=$CACHEKEEPER_DIR/etc/cachekeeper
    generator_conf+=/cachekeeper-config-generator.conf
    rm -f $CACHEKEEPER_CONF
    oslo-config-generator --config-file $generator_conf \
        --output-file $CACHEKEEPER_CONF

    iniset $CACHEKEEPER_CONF DEFAULT instances_path "$NOVA_INSTANCES_PATH"
    # nova's config file comes first on the command line and sets nova's own
    # state_path: this one must override it.
    iniset $CACHEKEEPER_CONF DEFAULT state_path "$CACHEKEEPER_STATE_PATH"
    iniset $CACHEKEEPER_CONF image_cache manager_interval \
        "$CACHEKEEPER_INTERVAL"

    disable_nova_image_cache_manager
}

# start_cachekeeper() - Run the daemon next to nova-compute, with nova's
# compute config first so it sees nova's instances_path and host
function start_cachekeeper {
    local cmd="$CACHEKEEPER_BIN_DIR/cachekeeper"
    cmd+=" --config-file ${NOVA_CPU_CONF:-$NOVA_CONF}"
    cmd+=" --config-file $CACHEKEEPER_CONF"
    run_process cachekeeper "$cmd"
}

# stop_cachekeeper() - Stop the daemon
function stop_cachekeeper {
    stop_process cachekeeper
}

# cleanup_cachekeeper() - Remove the config and the state, scrub queue
# included
function cleanup_cachekeeper {
    sudo rm -rf $CACHEKEEPER_CONF_DIR $CACHEKEEPER_STATE_PATH
}


# Dispatcher
# ----------

if is_service_enabled cachekeeper; then
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing cachekeeper"
        install_cachekeeper
    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        if is_service_enabled n-cpu; then
            echo_summary "Configuring cachekeeper"
            configure_cachekeeper
        fi
    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        if is_service_enabled n-cpu; then
            echo_summary "Starting cachekeeper"
            start_cachekeeper
        fi
    fi

    if [[ "$1" == "unstack" ]]; then
        stop_cachekeeper
    fi

    if [[ "$1" == "clean" ]]; then
        cleanup_cachekeeper
    fi
fi

# Restore xtrace
$XTRACE

# Tell emacs to use shell-script-mode
## Local variables:
## mode: shell-script
## End:
