"""What nova-conductor, nova-scheduler and nova-compute would record for the harness's servers, in-process.

A STAND-IN (a debt, said here and in tests/servers/nova_api.py): the tests need servers that Nova's API
serves as built, and a rebuild that Nova's API accepts, but no guest. nova-api casts
``schedule_and_build_instances`` and ``rebuild_instance`` to the conductor over oslo.messaging; with
``transport_url = fake://`` those casts stay in this process, where this RPC endpoint takes them and
writes, with Nova's own objects into the same SQLite databases, what the real services would leave
behind on success:

- build: the build request becomes an instance in cell1 (``BuildRequest.get_new_instance``, ``create``
  in the cell, the instance mapping pointed at the cell, the build request destroyed), ACTIVE on host
  ``imgsign-compute``, as the conductor's ``schedule_and_build_instances`` and a successful
  ``build_and_run_instance`` do;
- rebuild: the instance ACTIVE again with no task state and the new image. The API itself has already
  saved the new ``trusted_certs`` (nova.compute.api.API.rebuild) before it cast.

Everything the tests read (the server, its ``trusted_image_certificates``) is Nova's API reading Nova's
databases; only these state transitions are not made by the real services.
"""

import threading

import oslo_messaging as messaging
from nova import context as nova_context
from nova import objects, rpc
from nova.compute import power_state, vm_states
from nova.objects import base as objects_base
from oslo_config import cfg
from oslo_utils import timeutils

HOST = "imgsign-compute"
_LOCK = threading.Lock()


def _cell(context):
    cells = [cell for cell in objects.CellMappingList.get_all(context) if not cell.is_cell0()]
    if len(cells) != 1:
        raise RuntimeError(f"expected exactly one cell besides cell0, found {len(cells)}")
    return cells[0]


class ComputeTaskStandIn:
    target = messaging.Target(namespace="compute_task", version="1.25")

    def schedule_and_build_instances(self, context, build_requests, request_specs, image, admin_password,
                                     injected_files, requested_networks, block_device_mapping, tags=None):
        with _LOCK:
            cell = _cell(context)
            for build_request in build_requests:
                instance = build_request.get_new_instance(context)
                instance.host = instance.node = instance.launched_on = HOST
                instance.vm_state, instance.task_state = vm_states.ACTIVE, None
                instance.power_state = power_state.RUNNING
                instance.launched_at = timeutils.utcnow()
                with nova_context.target_cell(context, cell) as cctxt:
                    instance._context = cctxt
                    instance.create()
                mapping = objects.InstanceMapping.get_by_instance_uuid(context, instance.uuid)
                mapping.cell_mapping = cell
                mapping.save()
                build_request.destroy()

    def rebuild_instance(self, context, instance, new_pass, injected_files, image_ref, orig_image_ref,
                         orig_sys_metadata, bdms, recreate=False, on_shared_storage=False, host=None,
                         preserve_ephemeral=False, request_spec=None, reimage_boot_volume=False,
                         target_state=None):
        with _LOCK:
            mapping = objects.InstanceMapping.get_by_instance_uuid(context, instance.uuid)
            with nova_context.target_cell(context, mapping.cell_mapping) as cctxt:
                current = objects.Instance.get_by_uuid(cctxt, instance.uuid)
                current.image_ref = image_ref
                current.vm_state, current.task_state = vm_states.ACTIVE, None
                current.save()


def start():
    """Serve the stand-in on the conductor topic of Nova's (in-memory) transport."""
    target = messaging.Target(topic="conductor", server=cfg.CONF.host)
    server = rpc.get_server(target, [ComputeTaskStandIn()], objects_base.NovaObjectSerializer())
    server.start()
    return server
