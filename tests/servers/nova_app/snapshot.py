"""Snapshot an instance with Nova 34's own libvirt driver: ``LibvirtDriver.snapshot()`` (in Nova's venv).

Usage: NOVA_AUTH_TOKEN=... snapshot.py NOVA_CONF REQUEST_JSON

``NOVA_CONF`` is a nova.conf with ``[libvirt] connection_uri``/``virt_type``/``snapshots_directory``,
``[glance] endpoint_override`` (the gateway) and ``[nova_sys_admin] helper_command`` (privsep).
REQUEST_JSON: ``{"instance_uuid", "project_id", "user_id", "base_image_id", "base_image": {Glance's
record of the base, as nova-api stored it in the instance's system metadata}, "name"}``.

What runs is Nova's code, as nova-api and nova-compute run it for ``openstack server image create``:

1. nova-api's ``nova.compute.utils.create_image`` creates the queued snapshot record in Glance (through
   the gateway, which passes it through) with the properties Nova gives a snapshot (``image_type``,
   ``instance_uuid``, ``base_image_ref``, the inherited ``image_*`` system metadata, minus the
   ``img_signature*`` properties Nova strips);
2. nova-compute's ``LibvirtDriver(virtapi).snapshot(context, instance, image_id, update_task_state)``:
   finds the guest by the instance's uuid, chooses live or cold (QEMU, guest not shut off), extracts
   the disk (live: a blockRebase copy to a qcow2 delta, then ``qemu-img convert``; cold: ``qemu-img
   convert`` of the disk) into ``snapshots_directory`` and uploads it with ``PUT /v2/images/{id}/file``.

Stand-ins (Nova's compute manager is not running): the ``VirtAPI`` is Nova's base class (snapshot never
calls it); ``update_task_state`` records the task states (the manager saves them on the instance in
its DB); the instance is an ``objects.Instance`` built in memory, never saved (no DB). The driver is
started as nova-compute starts it (``init_host``: libvirt events, version checks, the vTPM flag the
live path reads); its connection-event callback then fails to update the compute service's record
(there is no Nova DB: logged as a warning, as nova-compute logs it when its DB is unreachable).

Prints one JSON line ``{"image_id", "task_states", "live"}`` and exits 0; on failure prints Nova's
exception (class and message) on stderr and exits 1.
"""

import json
import logging
import os
import sys


def main(conf: str, request_path: str) -> int:
    import os

    import nova.conf
    from nova import context, objects, utils
    from nova.compute import power_state, task_states, vm_states
    from nova.compute import utils as compute_utils
    from nova.image import glance
    from nova.virt import virtapi

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    nova.conf.CONF(["--config-file", conf], project="nova")
    objects.register_all()
    from nova.virt.libvirt import driver as libvirt_driver

    with open(request_path) as handle:
        request = json.load(handle)
    ctx = context.RequestContext(user_id=request["user_id"], project_id=request["project_id"], roles=["member"],
                                 auth_token=os.environ["NOVA_AUTH_TOKEN"])
    # What nova-api stored at boot: the base image's record as system metadata (image_* keys).
    system_metadata = utils.get_system_metadata_from_image(request["base_image"])
    system_metadata["image_base_image_ref"] = request["base_image_id"]
    instance = objects.Instance(
        context=ctx, id=1, uuid=request["instance_uuid"], project_id=request["project_id"],
        user_id=request["user_id"], image_ref=request["base_image_id"], kernel_id="", ramdisk_id="", os_type=None,
        host="compute-test", node="compute-test", vm_state=vm_states.ACTIVE, task_state=task_states.IMAGE_SNAPSHOT,
        power_state=power_state.RUNNING, system_metadata=system_metadata)
    states: list[str] = []

    def update_task_state(task_state, expected_state=task_states.IMAGE_SNAPSHOT):
        states.append(task_state)

    image_api = glance.API()
    try:
        image = compute_utils.create_image(ctx, instance, request["name"], "snapshot", image_api)
        driver = libvirt_driver.LibvirtDriver(virtapi.VirtAPI(), read_only=False)
        driver.init_host(host="compute-test")  # as nova-compute does at start
        guest = driver._host.get_guest(instance)
        live = guest.get_power_state(driver._host) != power_state.SHUTDOWN
        driver.snapshot(ctx, instance, image["id"], update_task_state)
    except Exception as exc:  # reported to the test, which asserts on it
        logging.getLogger("snapshot").exception("snapshot failed")
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"image_id": image["id"], "task_states": states, "live": live}))
    return 0


if __name__ == "__main__":
    code = main(*sys.argv[1:3])
    sys.stdout.flush()
    sys.stderr.flush()
    # init_host() started libvirt's event loop thread, which runs for the life of the process (a
    # nova-compute service ends it by exiting): end the process rather than wait for it.
    os._exit(code)
