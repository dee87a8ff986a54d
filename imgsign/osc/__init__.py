"""``openstack image sign|verify|audit``: imgsign as a plugin of the ``openstack`` command (OSC).

Installed with the extra ``imgsign[osc]``; OSC finds :mod:`imgsign.osc.plugin` through the
``openstack.cli.extension`` entry point and the commands of :mod:`imgsign.osc.v1` through
``openstack.imgsign.v1``. The commands share OSC's clouds.yaml, ``--os-*`` auth options, ``-f``
formatters and ``--debug``; everything else is imgsign's own command line (:mod:`imgsign.cli`), whose
options they take over, so both spell and check every option the same way.
"""
